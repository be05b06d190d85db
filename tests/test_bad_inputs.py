"""Bad inputs (issue 8): each is either skipped and reported, or refused with one line and exit code 2.

One image folder holds every bad or unusual file next to a few good images, and one ``build``
in a child process (whose peak memory is measured) covers all of them. Refused inputs go
through the command line in-process; none may leave an output folder behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import encode, make_official_scorer, noise_image
from PIL import Image
from test_cli import run_cli

from d2c_pack.sources.preprocess import center_crop_adm

SCORE_FLAGS = ["--resolution", "16", "--timesteps", "2", "--workers", "0", "--device", "cpu"]
BUILD_FLAGS = [*SCORE_FLAGS, "--text-encoder", "none", "--visual-encoder", "none", "--vae", "none"]
# Files that cannot be used, with a part of the reason the run gives for each.
UNUSABLE = {
    "ant/truncated.jpg": "truncated",
    "ant/empty.jpg": "empty file",
    "ant/text.jpg": "not a recognised image format",
    "bee/bomb.png": "decompression bomb",  # over 2× PIL's pixel limit: refused by PIL
    "bee/big.png": "decompression bomb",  # between 1× and 2×: PIL only warns, d2c-pack refuses
}
# Valid images in unusual forms: each must be scored and packaged like any other.
UNUSUAL = ["cat/tiny.png", "cat/deep.png", "cat/cmyk.jpg", "cat/palette.png", "cat/rotated.jpg", "cat/bad\\xff.png"]
CLASSES = ["ant", "bee", "cat", "dog", "\\xe9lan"]  # dog is empty; b"\xe9lan" is a Latin-1 folder name
EXIF_ORIENTATION = 0x0112


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width``×``height`` RGB pixels, with an empty image stream: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_bytes_at(path: bytes, data: bytes) -> None:
    """Writes a file whose name may be any bytes (``Path`` cannot spell a name that is not UTF-8)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


def make_bad_corpus(root: Path) -> Path:
    """Four good images in each of ant, bee, cat; the ``UNUSABLE`` and ``UNUSUAL`` files; an empty class; a non-UTF-8 class."""
    for label, name in enumerate(CLASSES[:3]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(encode(noise_image((16 + i, 20), 10 * label + i), "PNG"))
    (root / "dog").mkdir()
    write_bytes_at(os.fsencode(root) + b"/\xe9lan/0.png", encode(noise_image((20, 16), 40), "PNG"))
    jpeg = encode(noise_image((64, 64), 50), "JPEG")
    (root / "ant/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "ant/empty.jpg").write_bytes(b"")
    (root / "ant/text.jpg").write_text("this is not a picture\n")
    (root / "bee/bomb.png").write_bytes(png_claiming(100_000, 100_000))  # 30 GB if decoded
    (root / "bee/big.png").write_bytes(png_claiming(10_000, 10_000))
    (root / "cat/tiny.png").write_bytes(encode(noise_image((1, 1), 51), "PNG"))
    deep = np.random.default_rng(52).integers(0, 65536, (20, 18), dtype=np.uint16)
    (root / "cat/deep.png").write_bytes(encode(Image.fromarray(deep), "PNG"))  # 16-bit greyscale
    (root / "cat/cmyk.jpg").write_bytes(encode(noise_image((18, 18), 53).convert("CMYK"), "JPEG"))
    palette = noise_image((18, 18), 54).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    (root / "cat/palette.png").write_bytes(encode(palette, "PNG", transparency=0))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown rotated 90° clockwise (portrait)
    (root / "cat/rotated.jpg").write_bytes(encode(noise_image((24, 16), 55), "JPEG", exif=exif))
    write_bytes_at(os.fsencode(root) + b"/cat/bad\xff.png", encode(noise_image((17, 17), 56), "PNG"))
    return root


@dataclasses.dataclass
class Run:
    """A finished child process: exit code, output and peak resident memory."""

    code: int
    stdout: str
    stderr: str
    peak_rss_bytes: int


def run_child(args: list[str], folder: Path) -> Run:
    """Runs ``python -m d2c_pack ARGS`` and measures that process alone (``wait4``, not all children's maximum)."""
    stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
    env = os.environ | {"HF_DATASETS_CACHE": str(folder / "hf-cache")}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "d2c_pack", *args], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Run(process.returncode, stdout.read_text(), stderr.read_text(), usage.ru_maxrss * 1024)  # ru_maxrss: KiB on Linux


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    make_bad_corpus(root / "images")
    make_official_scorer(root / "models", num_classes=len(CLASSES))
    return root


def inputs(corpus: Path, source: str | None = None) -> list[str]:
    """``--source`` (default: the corpus), ``--scorer`` and ``--work`` for a command on the corpus's tiny scorer."""
    scorer = corpus / "models" / "SiT-tiny-16.pt"
    return ["--source", source or str(corpus / "images"), "--scorer", str(scorer), "--work", str(corpus / "work")]


@pytest.fixture(scope="module")
def built(corpus: Path) -> Run:
    """``build`` over the whole corpus, taking every image (100 per class)."""
    return run_child(["build", *inputs(corpus), *BUILD_FLAGS, "--out", str(corpus / "out"), "--budget", "100/class"], corpus)


def manifest(corpus: Path) -> dict:
    return json.loads((corpus / "out" / "d2c" / "manifest.json").read_text())


def parquet_table(folder: Path) -> tuple[dict[str, float], list[str]]:
    """source_id → difficulty of the one parquet shard in ``folder``, and its class names."""
    (shard,) = folder.glob("*.parquet")
    table = pq.read_table(shard, columns=["source_id", "difficulty"])
    names = datasets.Features.from_arrow_schema(pq.read_schema(shard))["label"].names
    return dict(zip(table["source_id"].to_pylist(), table["difficulty"].to_pylist())), names


def test_the_corpus_builds_without_traceback_in_little_memory(built: Run) -> None:
    assert built.code == 0, built.stderr
    assert "Traceback" not in built.stderr
    # Decoding the bomb would take 40 GB (PIL stores RGB in 4 bytes); the run itself needs about 1 GB.
    assert built.peak_rss_bytes < 2 * 2**30


def test_unusable_files_are_skipped_and_reported(built: Run, corpus: Path) -> None:
    reasons = {entry["source_id"]: entry["reason"] for entry in manifest(corpus)["unreadable"]}
    assert sorted(reasons) == sorted(UNUSABLE)
    for source_id, reason in reasons.items():
        assert reason.startswith("cannot decode: ") and UNUSABLE[source_id] in reason, (source_id, reason)
    assert f"skipped {len(UNUSABLE)} unreadable image(s)" in built.stdout and "manifest.json" in built.stdout
    for source_id in UNUSABLE:
        assert f"skipping image {source_id}" in built.stderr  # logged as it happens


def test_unusual_images_are_scored_and_packaged(built: Run, corpus: Path) -> None:
    scored, names = parquet_table(corpus / "out" / "scores")
    packaged, _ = parquet_table(corpus / "out" / "data")
    assert names == CLASSES  # a folder name that is not UTF-8 becomes a readable, escaped class name
    assert len(scored) == 3 * 4 + 1 + len(UNUSUAL)
    for source_id in UNUSUAL:
        assert np.isfinite(scored[source_id]) and packaged[source_id] == scored[source_id], source_id
    assert "\\xe9lan/0.png" in packaged


def test_an_empty_class_gets_no_rows_and_is_reported(built: Run, corpus: Path) -> None:
    assert manifest(corpus)["selection"]["per_class_rows"] == [4, 4, 4 + len(UNUSUAL), 0, 1]
    assert "1 of the 5 classes have no image in the source: 'dog'" in built.stdout


def test_score_reports_the_skipped_images(built: Run, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(monkeypatch, "score", *inputs(corpus), *SCORE_FLAGS) == 0  # from the build's cache
    assert f"{len(UNUSABLE)} unreadable skipped" in capsys.readouterr().out


def test_the_exif_orientation_is_applied_before_cropping(corpus: Path) -> None:
    stored = Image.open(corpus / "images" / "cat" / "rotated.jpg")
    assert stored.size == (24, 16) and stored.getexif()[EXIF_ORIENTATION] == 6
    upright = Image.fromarray(np.asarray(stored)).transpose(Image.Transpose.ROTATE_270)  # pixels only: no EXIF left
    assert upright.size == (16, 24)
    crop = np.asarray(center_crop_adm(stored, 16))
    np.testing.assert_array_equal(crop, np.asarray(center_crop_adm(upright, 16)))
    assert not np.array_equal(crop, np.asarray(center_crop_adm(Image.fromarray(np.asarray(stored)), 16)))


# ---------------------------------------------------------------- refused inputs


def assert_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    """The command exits with code 2 and one line naming the problem (after any progress and skip logs), and leaves no output behind."""
    out = Path(args[args.index("--out") + 1])
    capsys.readouterr()  # drop what making the inputs printed
    assert run_cli(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err.strip().splitlines()[-1], err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert not out.exists() and not out.with_name(f".{out.name}.partial").exists()


def build_args(corpus: Path, tmp_path: Path, *args: str, source: str | None = None) -> list[str]:
    """A ``build`` of ``source`` (default: the corpus) into ``tmp_path/out``, plus ``args``."""
    return ["build", *inputs(corpus, source), *BUILD_FLAGS, "--out", str(tmp_path / "out"), *args]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("0", "invalid budget '0' (the budget must be positive)"),
        ("-1", "invalid budget '-1' (the budget must be positive)"),
        ("101%", "invalid budget '101%' (a percentage must be in (0, 100])"),
        ("abc", "invalid budget 'abc' (not a budget)"),
    ],
)
def test_bad_budgets_are_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys, budget: str, message: str) -> None:
    assert_refused(monkeypatch, capsys, build_args(corpus, tmp_path, "--budget", budget), message)


@pytest.mark.parametrize(
    ("recipe_text", "message"),
    [
        ("budget: 10/class\nbatchsize: 4\n", "unknown recipe key 'batchsize' for `build`"),
        ("budget: 10/class\nseed: many\n", "recipe key 'seed': Input should be a valid integer"),
        ("budget: 10/class\nwith_scores: maybe\n", "recipe key 'with_scores': Input should be a valid boolean"),
    ],
)
def test_bad_build_recipes_are_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys, recipe_text: str, message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    assert_refused(monkeypatch, capsys, build_args(corpus, tmp_path, "--recipe", str(recipe)), message)


def test_a_source_with_no_readable_image_is_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "broken" / "ant").mkdir(parents=True)
    (tmp_path / "broken" / "ant" / "empty.png").write_bytes(b"")
    # Scored first (the image is unreadable only once decoded), then refused before anything is written.
    assert_refused(monkeypatch, capsys, build_args(corpus, tmp_path, source=str(tmp_path / "broken")), "could be read; nothing to select")


def tiny_dataset(labels: list[int], keys: list[str | None]) -> datasets.Dataset:
    """8×8 images with integer labels and an id column ``key``."""
    images = [{"bytes": encode(noise_image((8, 8), i), "PNG"), "path": None} for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "label": labels, "key": keys}).cast_column("image", datasets.Image())


def label_out_of_range(root: Path) -> tuple[str, list[str]]:
    """A ``save_to_disk`` folder whose labels reach 5 though its ClassLabel names three classes."""
    tiny_dataset([0, 1, 2, 5], ["a", "b", "c", "d"]).save_to_disk(str(root))
    info = json.loads((root / "dataset_info.json").read_text())  # ClassLabel itself refuses such values: edit the declaration
    info["features"]["label"] = datasets.Features({"label": datasets.ClassLabel(names=["x", "y", "z"])}).to_dict()["label"]
    (root / "dataset_info.json").write_text(json.dumps(info))
    return str(root), []


def repeated_ids_in_parquet(root: Path) -> tuple[str, list[str]]:
    root.mkdir()
    tiny_dataset([0, 1, 1, 0, 1], ["a", "b", "a", "c", "b"]).to_parquet(str(root / "part-0.parquet"))
    return str(root), ["--id-column", "key"]


def repeated_ids_streamed(root: Path) -> tuple[str, list[str]]:
    (root / "data").mkdir(parents=True)
    tiny_dataset([0, 1, 1], ["a", "b", "b"]).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return f"hf:{root}", ["--id-column", "key", "--streaming"]


def missing_ids(root: Path) -> tuple[str, list[str]]:
    tiny_dataset([0, 1, 1], ["a", None, "c"]).save_to_disk(str(root))
    return str(root), ["--id-column", "key"]


def split_missing_on_disk(root: Path) -> tuple[str, list[str]]:
    datasets.DatasetDict({"train": tiny_dataset([0, 1], ["a", "b"]), "test": tiny_dataset([1], ["c"])}).save_to_disk(str(root))
    return str(root), ["--split", "validation"]


def split_missing_in_hub_folder(root: Path) -> tuple[str, list[str]]:
    (root / "data").mkdir(parents=True)
    tiny_dataset([0, 1], ["a", "b"]).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return f"hf:{root}", ["--split", "validation"]


DATASETS_CASES = [
    (label_out_of_range, "column 'label' has label 5 but only 3 class names"),
    (repeated_ids_in_parquet, "column 'key' repeats ids, e.g. 'a' (2 times, 2 repeated ids in all); choose another --id-column"),
    (repeated_ids_streamed, "column 'key' repeats ids, e.g. 'b' (2 times, 1 repeated ids in all)"),
    (missing_ids, "1 images have no id in column 'key'"),
    (split_missing_on_disk, "has no split 'validation'; available splits: train, test"),
    (split_missing_in_hub_folder, "has no split 'validation'; available splits: train"),
]


@pytest.mark.parametrize(("make_source", "message"), DATASETS_CASES, ids=[make.__name__ for make, _ in DATASETS_CASES])
def test_bad_datasets_sources_are_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys, make_source, message: str) -> None:
    source, args = make_source(tmp_path / "source")
    assert_refused(monkeypatch, capsys, build_args(corpus, tmp_path, *args, source=source), message)


def test_a_scorer_that_knows_fewer_classes_than_the_source_is_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    two_classes = make_official_scorer(tmp_path / "scorer2", num_classes=2)
    args = [*build_args(corpus, tmp_path), "--scorer", str(two_classes)]
    assert_refused(monkeypatch, capsys, args, "but the scorer")
