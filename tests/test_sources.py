"""Tests for d2c_pack.sources.image_source: every source kind, corrupt images, errors, fingerprints."""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import encode
from conftest import noise_image as noise
from PIL import Image

from d2c_pack.core.errors import SourceError, UserError
from d2c_pack.sources.image_source import ImageFolderSource, ImageSource, SourceRecord, open_source


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels, with an empty image data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def records_summary(source: ImageSource) -> list[tuple[int, str, int, bytes]]:
    return [(r.index, r.source_id, r.label, r.data) for r in source.iter_records()]


# ---------------------------------------------------------------- demo digits


@pytest.fixture(scope="module")
def digits() -> ImageSource:
    return open_source("demo:digits")


def test_digits_listing(digits: ImageSource) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert len(digits) == 1797
    assert digits.num_classes == 10
    assert digits.class_names == [str(d) for d in range(10)]
    assert sum(digits.class_sizes) == 1797
    assert digits.class_sizes == np.bincount(target, minlength=10).tolist()
    assert digits.random_access


def test_digits_records(digits: ImageSource) -> None:
    from sklearn.datasets import load_digits

    loaded = load_digits()
    records = list(digits.iter_records())
    assert [r.index for r in records] == list(range(1797))
    assert [r.source_id for r in records[:2]] == ["digits/0000", "digits/0001"]
    assert records[-1].source_id == "digits/1796"
    assert [r.label for r in records] == loaded.target.tolist()
    assert digits.skipped == []
    for record in records[:50]:
        assert record.image.mode == "RGB" and record.image.size == (32, 32)
        decoded = Image.open(io.BytesIO(record.data))
        assert decoded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(record.image))
    # Bright pixels where the 8×8 original has ink: the rendering really is that digit.
    small = np.asarray(records[0].image.convert("L").resize((8, 8), Image.BOX)).astype(int)
    assert np.corrcoef(small.ravel(), loaded.images[0].ravel())[0, 1] > 0.9


def test_digits_are_stable(digits: ImageSource) -> None:
    again = open_source("demo:digits")
    assert again.fingerprint() == digits.fingerprint()
    picked = [0, 7, 1796]
    assert [(r.source_id, r.data) for r in again.iter_records(picked)] == [
        (r.source_id, r.data) for r in digits.iter_records(picked)
    ]
    record = digits.get(42)
    assert isinstance(record, SourceRecord)
    assert record.index == 42 and record.source_id == "digits/0042"


def test_unknown_demo() -> None:
    with pytest.raises(SourceError, match="demo:digits"):
        open_source("demo:cifar")


# ---------------------------------------------------------------- image folder

GOOD_FILES = {
    "n01440764/a.JPEG": ("JPEG", (40, 30)),
    "n01440764/sub/deeper/b.png": ("PNG", (9, 13)),
    "n01440764/c.JPG": ("JPEG", (8, 8)),
    "n01443537/d.bmp": ("BMP", (7, 5)),
    "n01443537/e.gif": ("GIF", (6, 6)),
    "n01443537/nested/f.webp": ("WEBP", (10, 4)),
    "zebra-custom/g.tif": ("TIFF", (3, 3)),
    "zebra-custom/h.TIFF": ("TIFF", (4, 3)),
    "zebra-custom/i.jpeg": ("JPEG", (16, 16)),
}
CORRUPT_FILES = ["n01440764/truncated.jpg", "n01443537/empty.jpg", "zebra-custom/text.jpg"]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for seed, (relative, (fmt, size)) in enumerate(GOOD_FILES.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(noise(size, seed), fmt))
    (root / "n99999999").mkdir()  # WordNet-like but unknown, and empty
    full_jpeg = encode(noise((64, 64), 99), "JPEG")
    (root / CORRUPT_FILES[0]).write_bytes(full_jpeg[: len(full_jpeg) // 2])
    (root / CORRUPT_FILES[1]).write_bytes(b"")
    (root / CORRUPT_FILES[2]).write_text("this is not a picture\n")
    (root / "n01440764" / "notes.txt").write_text("ignored: not an image extension")
    (root / "n01440764" / ".hidden.jpg").write_bytes(encode(noise((2, 2), 5), "JPEG"))
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(encode(noise((2, 2), 6), "PNG"))
    (root / "top-level.png").write_bytes(encode(noise((2, 2), 7), "PNG"))
    return root


def test_image_folder_listing(image_folder: Path) -> None:
    source = open_source(str(image_folder))
    assert isinstance(source, ImageFolderSource)
    assert source.class_names[0] == "tench, Tinca tinca"
    assert source.class_names[1].startswith("goldfish")
    assert source.class_names[2:] == ["n99999999", "zebra-custom"]
    # Known from the listing alone; corrupt files are only found when decoded.
    assert source.class_sizes == [4, 4, 0, 4]
    assert len(source) == 12
    assert source.skipped == []


def test_image_folder_records_and_corrupt_files(
    image_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = open_source(str(image_folder))
    with caplog.at_level(logging.WARNING, logger="d2c_pack.sources.image_source"):
        records = list(source.iter_records())
    expected_ids = sorted(GOOD_FILES)
    assert [r.source_id for r in records] == expected_ids
    all_ids = sorted([*GOOD_FILES, *CORRUPT_FILES])
    assert [r.index for r in records] == [all_ids.index(i) for i in expected_ids]
    labels = {"n01440764": 0, "n01443537": 1, "zebra-custom": 3}
    for record in records:
        assert record.label == labels[record.source_id.split("/")[0]]
        assert record.data == (image_folder / record.source_id).read_bytes()
        assert record.image.size == GOOD_FILES[record.source_id][1]
    assert records[expected_ids.index("n01443537/e.gif")].image.mode == "P"  # no RGB conversion

    assert sorted(s.source_id for s in source.skipped) == sorted(CORRUPT_FILES)
    assert all(s.reason.startswith("cannot decode: ") for s in source.skipped)
    reasons = {s.source_id: s.reason for s in source.skipped}
    assert reasons["n01443537/empty.jpg"] == "cannot decode: empty file"
    assert "truncated" in reasons["n01440764/truncated.jpg"]
    assert reasons["zebra-custom/text.jpg"] == "cannot decode: not a recognised image format"
    for skipped in source.skipped:
        assert skipped.source_id in caplog.text
        assert all_ids[skipped.index] == skipped.source_id

    list(source.iter_records())
    assert len(source.skipped) == 3  # each corrupt image is recorded once


def test_image_folder_random_access(image_folder: Path) -> None:
    source = open_source(str(image_folder))
    by_index = {r.index: r for r in source.iter_records()}
    for index in range(len(source)):
        record = source.get(index)
        if index in by_index:
            assert record == SourceRecord(**{**by_index[index].__dict__, "image": record.image})
            np.testing.assert_array_equal(np.asarray(record.image), np.asarray(by_index[index].image))
        else:
            assert record is None
    picked = list(source.iter_records(indices=[10, 0, 2, 2, 3]))
    assert [r.index for r in picked] == [0, 2, 10]  # 3 is the truncated JPEG
    assert list(source.iter_records(indices=[])) == []
    with pytest.raises(IndexError):
        source.get(len(source))


def test_image_folder_fingerprint(image_folder: Path) -> None:
    first = open_source(str(image_folder)).fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    assert open_source(str(image_folder)).fingerprint() == first
    (image_folder / "zebra-custom" / "new.png").write_bytes(encode(noise((3, 3), 11), "PNG"))
    added = open_source(str(image_folder)).fingerprint()
    assert added != first
    changed = image_folder / "zebra-custom" / "new.png"
    changed.write_bytes(encode(noise((5, 5), 12), "PNG"))
    os.utime(changed, ns=(0, 1))
    assert open_source(str(image_folder)).fingerprint() != added


def copied_with_new_times(folder: Path, target: Path) -> Path:
    """A copy of ``folder`` as `cp -r` makes it: same bytes, every file with a new modification time."""
    copy = Path(shutil.copytree(folder, target, copy_function=shutil.copyfile))
    for path in copy.rglob("*"):
        os.utime(path, ns=(1, 1_000_000_007))
    return copy


def test_image_folder_fingerprint_is_content_not_place_or_time(image_folder: Path, tmp_path: Path) -> None:
    first = open_source(str(image_folder)).fingerprint()
    copy = copied_with_new_times(image_folder, tmp_path / "elsewhere" / "copy")
    assert open_source(str(copy)).fingerprint() == first
    edited = copy / "n01443537" / "d.bmp"
    before = edited.stat()
    edited.write_bytes(encode(noise((7, 5), 42), "BMP"))  # other pixels: same size (uncompressed), same time
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert edited.stat().st_size == before.st_size
    assert open_source(str(copy)).fingerprint() != first


def test_parquet_fingerprint_is_content_not_place_or_time(tmp_path: Path) -> None:
    dataset, _ = labelled_dataset()
    folder = parquet_shards(tmp_path / "shards", dataset)
    repo = write_hub_repo(tmp_path / "repo", dataset)
    for spec, copy in ((str(folder), str(copied_with_new_times(folder, tmp_path / "a" / "shards"))), (f"hf:{repo}", f"hf:{copied_with_new_times(repo, tmp_path / 'b' / 'repo')}")):
        assert open_source(copy).fingerprint() == open_source(spec).fingerprint()
    shard = tmp_path / "a" / "shards" / "part-1.parquet"
    dataset.select([6, 5, 4]).to_parquet(str(shard))  # the same rows in another order
    assert open_source(str(shard.parent)).fingerprint() != open_source(str(folder)).fingerprint()


def test_file_gone_after_listing_is_skipped(image_folder: Path) -> None:
    source = open_source(str(image_folder))
    (image_folder / "n01443537" / "d.bmp").unlink()
    ids = [r.source_id for r in source.iter_records()]
    assert "n01443537/d.bmp" not in ids and len(ids) == len(GOOD_FILES) - 1
    gone = [s for s in source.skipped if s.source_id == "n01443537/d.bmp"]
    assert len(gone) == 1 and gone[0].reason.startswith("cannot read: ")


def test_decompression_bomb_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "bombs"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "bomb.png").write_bytes(png_header_only(20_000, 10_000))
    (root / "cls" / "ok.png").write_bytes(encode(noise((4, 4), 0), "PNG"))
    source = open_source(str(root))
    assert [r.source_id for r in source.iter_records()] == ["cls/ok.png"]
    assert "decompression bomb" in source.skipped[0].reason


# ---------------------------------------------------------------- datasets-backed sources


def labelled_dataset(
    label_names: tuple[str, ...] | None = ("cat", "dog", "fish"),
) -> tuple[datasets.Dataset, list[bytes]]:
    """Seven images in mixed formats, some with a stored file name, and a corrupt one."""
    blobs = [
        encode(noise((5, 4), 0), "PNG"),
        encode(noise((8, 8), 1), "JPEG", quality=80),
        encode(noise((3, 6), 2, "RGBA"), "PNG"),
        encode(noise((6, 6), 3), "WEBP"),
        b"definitely not an image",
        encode(noise((7, 2), 4), "BMP"),
        encode(noise((4, 4), 5), "PNG"),
    ]
    paths = ["a.png", "b.jpg", None, None, "broken.png", "f.bmp", None]
    table = {
        "image": [{"bytes": b, "path": p} for b, p in zip(blobs, paths)],
        "label": [0, 1, 1, 2, 0, 1, 1],
        "key": [f"k{i}" for i in range(7)],
    }
    dataset = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    if label_names:
        dataset = dataset.cast_column("label", datasets.ClassLabel(names=list(label_names)))
    return dataset, blobs


def check_records(source: ImageSource, blobs: list[bytes], split: str = "train") -> None:
    assert source.class_names == ["cat", "dog", "fish"]
    assert source.class_sizes == [2, 4, 1]
    assert len(source) == 7
    records = list(source.iter_records())
    assert [r.index for r in records] == [0, 1, 2, 3, 5, 6]
    assert [r.data for r in records] == [blobs[i] for i in (0, 1, 2, 3, 5, 6)]
    assert [r.label for r in records] == [0, 1, 1, 2, 1, 1]
    ids = [r.source_id for r in records]
    assert ids == ["a.png", "b.jpg", f"{split}/00000002", f"{split}/00000003", "f.bmp", f"{split}/00000006"]
    assert records[2].image.mode == "RGBA" and records[2].image.size == (3, 6)
    assert [(s.index, s.source_id) for s in source.skipped] == [(4, "broken.png")]


def write_hub_repo(root: Path, dataset: datasets.Dataset) -> Path:
    (root / "data").mkdir(parents=True)
    dataset.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    dataset.select([0, 1]).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_parquet_file(tmp_path: Path) -> None:
    dataset, blobs = labelled_dataset()
    path = tmp_path / "images.parquet"
    dataset.to_parquet(str(path))
    source = open_source(str(path))
    assert source.random_access
    check_records(source, blobs)
    assert source.get(1).data == blobs[1]
    assert source.get(4) is None
    assert [r.index for r in source.iter_records([6, 1])] == [1, 6]


def parquet_shards(folder: Path, dataset) -> Path:
    """``dataset`` as a folder of two parquet shards (rows 0–3 and 4–6)."""
    folder.mkdir()
    dataset.select(range(4)).to_parquet(str(folder / "part-0.parquet"))
    dataset.select(range(4, 7)).to_parquet(str(folder / "part-1.parquet"))
    return folder


def test_folder_of_parquet_shards(tmp_path: Path) -> None:
    dataset, blobs = labelled_dataset()
    folder = parquet_shards(tmp_path / "shards", dataset)
    check_records(open_source(str(folder)), blobs)


def test_save_to_disk(tmp_path: Path) -> None:
    dataset, blobs = labelled_dataset()
    dataset.save_to_disk(str(tmp_path / "saved"))
    source = open_source(str(tmp_path / "saved"))
    check_records(source, blobs)
    assert source.fingerprint() == open_source(str(tmp_path / "saved")).fingerprint()

    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "saved-dict"))
    check_records(open_source(str(tmp_path / "saved-dict"), split="validation"), blobs, "validation")
    with pytest.raises(SourceError, match="available splits: validation"):
        open_source(str(tmp_path / "saved-dict"))


def test_hub_folder_streaming_and_not(tmp_path: Path) -> None:
    dataset, blobs = labelled_dataset()
    repo = write_hub_repo(tmp_path / "repo", dataset)
    mapped = open_source(f"hf:{repo}")
    streamed = open_source(f"hf:{repo}", streaming=True)
    assert mapped.random_access and not streamed.random_access
    check_records(mapped, blobs)
    check_records(streamed, blobs)
    assert records_summary(mapped) == records_summary(streamed)
    assert mapped.fingerprint() == streamed.fingerprint()
    assert [r.index for r in streamed.iter_records(indices=[5, 1])] == [1, 5]
    with pytest.raises(UserError, match="random access"):
        streamed.get(0)

    test_split = open_source(f"hf:{repo}", split="test")
    assert len(test_split) == 2 and test_split.class_sizes == [1, 1, 0]
    assert test_split.fingerprint() != mapped.fingerprint()


def test_hub_fingerprint_follows_content(tmp_path: Path) -> None:
    dataset, _ = labelled_dataset()
    repo = write_hub_repo(tmp_path / "repo", dataset)
    before = open_source(f"hf:{repo}").fingerprint()
    assert open_source(f"hf:{repo}", streaming=True).fingerprint() == before
    shard = repo / "data" / "train-00000-of-00001.parquet"
    dataset.select(range(5)).to_parquet(str(shard))
    os.utime(shard, ns=(0, 1))
    changed = open_source(f"hf:{repo}")
    assert len(changed) == 5
    assert changed.fingerprint() != before


def test_id_column_and_integer_labels(tmp_path: Path) -> None:
    dataset, _ = labelled_dataset(label_names=None)
    path = tmp_path / "plain.parquet"
    dataset.to_parquet(str(path))
    source = open_source(str(path), id_column="key", split="extra")
    assert source.class_names == ["0", "1", "2"]
    assert source.class_sizes == [2, 4, 1]
    assert [r.source_id for r in source.iter_records()] == ["k0", "k1", "k2", "k3", "k5", "k6"]


def test_other_column_names(tmp_path: Path) -> None:
    dataset, blobs = labelled_dataset()
    dataset = dataset.rename_columns({"image": "jpg", "label": "cls"})
    path = tmp_path / "renamed.parquet"
    dataset.to_parquet(str(path))
    with pytest.raises(SourceError, match="no column 'image'; available columns: jpg, cls, key"):
        open_source(str(path))
    with pytest.raises(SourceError, match="no column 'label'"):
        open_source(str(path), image_column="jpg")
    with pytest.raises(SourceError, match="no column 'nope'"):
        open_source(str(path), image_column="jpg", label_column="cls", id_column="nope")
    with pytest.raises(SourceError, match="does not hold images"):
        open_source(str(path), image_column="key", label_column="cls")
    with pytest.raises(SourceError, match="class indices"):
        open_source(str(path), image_column="jpg", label_column="key")
    source = open_source(str(path), image_column="jpg", label_column="cls")
    assert [r.data for r in source.iter_records([0])] == [blobs[0]]


def test_unlabelled_split_is_refused(tmp_path: Path) -> None:
    dataset, _ = labelled_dataset(label_names=None)
    dataset = dataset.map(lambda row, i: {"label": -1 if i == 3 else row["label"]}, with_indices=True)
    path = tmp_path / "unlabelled.parquet"
    dataset.to_parquet(str(path))
    with pytest.raises(SourceError, match="1 images have no label"):
        open_source(str(path))


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "nowhere"))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="empty"):
        open_source(str(tmp_path))


def test_class_folders_without_images(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "readme.txt").write_text("no pictures here")
    with pytest.raises(SourceError, match="no images in the 2 class folders"):
        open_source(str(tmp_path))


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no classes here")
    with pytest.raises(SourceError, match="has no class sub-folders"):
        open_source(str(tmp_path))


def test_images_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(encode(noise((2, 2), 0), "PNG"))
    with pytest.raises(SourceError, match="no class sub-folders"):
        open_source(str(tmp_path))


def test_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n")
    with pytest.raises(SourceError, match="not a .parquet file"):
        open_source(str(path))


def test_unknown_scheme() -> None:
    with pytest.raises(SourceError, match="unknown source scheme"):
        open_source("xyz:some/thing")


def test_hub_errors(tmp_path: Path) -> None:
    dataset, _ = labelled_dataset()
    repo = write_hub_repo(tmp_path / "repo", dataset)
    with pytest.raises(SourceError, match="no split 'validation'; available splits: train, test"):
        open_source(f"hf:{repo}", split="validation")
    with pytest.raises(SourceError, match="no split 'validation'"):
        open_source(f"hf:{repo}", split="validation", streaming=True)
    with pytest.raises(SourceError, match="no column 'pixels'"):
        open_source(f"hf:{repo}", image_column="pixels")
    (tmp_path / "empty-repo").mkdir()
    with pytest.raises(SourceError, match="cannot open hf:"):
        open_source(f"hf:{tmp_path / 'empty-repo'}")
    with pytest.raises(SourceError, match="dataset name"):
        open_source("hf:")


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "missing"), "xyz:a", f"hf:{tmp_path}"):
        with pytest.raises(SourceError) as caught:
            open_source(spec)
        assert "\n" not in str(caught.value)
