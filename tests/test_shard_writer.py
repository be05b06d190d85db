"""Parquet shards written straight from rows: the declared features, hashes of the bytes on disk, size limits, same bytes on any core count."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_config, make_image_folder, make_official_scorer

from d2c_pack.pipeline.build import build
from d2c_pack.publish import shard_writer as shards
from d2c_pack.publish.shard_writer import arrow_tables, write_split
from d2c_pack.publish.verify import LocalFolder, verify

ROWS = 50
FEATURES = datasets.Features(
    {
        "label": datasets.ClassLabel(names=["cat", "dog"]),
        "source_id": datasets.Value("string"),
        "tokens": datasets.Array2D((4, 8), "float16"),
        "cls": datasets.List(datasets.Value("float32"), length=8),
        "latent": datasets.Array3D((2, 3, 3), "float16"),
    }
)


def rows(count: int = ROWS) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "label": i % 2,
            "source_id": f"img/{i:04d}.jpg",
            "tokens": rng.standard_normal((4, 8)).astype(np.float16),
            "cls": rng.standard_normal(8).astype(np.float32),
            "latent": rng.standard_normal((2, 3, 3)).astype(np.float16),
        }
        for i in range(count)
    ]


def write(root: Path, max_shard_size: str | int = "500MB", workers: int = 2, count: int = ROWS) -> shards.WrittenSplit:
    root.mkdir(parents=True, exist_ok=True)
    return write_split(arrow_tables(rows(count), FEATURES, workers), FEATURES, root, "data", max_shard_size, total=count, workers=workers)


def test_shards_load_with_the_declared_features_and_rows_in_order(tmp_path: Path) -> None:
    written = write(tmp_path, max_shard_size="2KB")
    assert len(written.files) > 2
    loaded = datasets.load_dataset(str(tmp_path), split="train")
    assert loaded.features == FEATURES
    assert loaded["source_id"] == [row["source_id"] for row in rows()]
    expected = np.stack([row["tokens"] for row in rows()])
    np.testing.assert_array_equal(np.array(loaded.with_format("numpy")["tokens"], dtype=np.float16), expected)
    assert written.info.splits["train"].num_examples == ROWS
    assert written.info.download_size == sum(p.stat().st_size for p in (tmp_path / "data").iterdir())


def test_digests_are_those_of_the_bytes_on_disk_and_no_partial_file_is_left(tmp_path: Path) -> None:
    written = write(tmp_path, max_shard_size="2KB")
    on_disk = {p.relative_to(tmp_path).as_posix(): p for p in sorted((tmp_path / "data").iterdir())}
    assert list(written.files) == list(on_disk)
    count = len(on_disk)
    assert list(on_disk) == [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    for name, digest in written.files.items():
        assert digest == shards.WrittenFile(hashlib.sha256(on_disk[name].read_bytes()).hexdigest(), on_disk[name].stat().st_size)


def test_shards_and_row_groups_respect_their_byte_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row_bytes = next(arrow_tables(rows(1), FEATURES, 1)).nbytes
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 3 * row_bytes)
    write(tmp_path, max_shard_size=10 * row_bytes)
    paths = sorted((tmp_path / "data").iterdir())
    assert len(paths) == -(-ROWS // 9)  # three row groups of three rows per shard
    for path in paths:
        parquet = pq.ParquetFile(path)
        groups = [parquet.read_row_group(i) for i in range(parquet.metadata.num_row_groups)]
        assert [group.num_rows for group in groups] == [3, 3, 3] if path != paths[-1] else all(group.num_rows <= 3 for group in groups)
        assert sum(group.nbytes for group in groups) <= 10 * row_bytes
        assert parquet.schema_arrow.metadata[b"huggingface"]  # what load_dataset reads the features from


def test_the_same_rows_give_the_same_bytes_with_any_number_of_threads(tmp_path: Path) -> None:
    one = write(tmp_path / "one", max_shard_size="3KB", workers=1)
    four = write(tmp_path / "four", max_shard_size="3KB", workers=4)
    assert one.files == four.files
    assert one.info == four.info


def test_an_empty_split_is_one_empty_shard(tmp_path: Path) -> None:
    written = write(tmp_path, count=0)
    assert list(written.files) == ["data/train-00000-of-00001.parquet"]
    parquet = pq.ParquetFile(tmp_path / "data/train-00000-of-00001.parquet")
    assert parquet.metadata.num_rows == 0
    assert datasets.Features.from_arrow_schema(parquet.schema_arrow) == FEATURES


def test_a_failing_row_stops_the_writers_with_its_error(tmp_path: Path) -> None:
    def failing() -> list[dict]:
        yield from rows()[:20]
        raise ValueError("source went away")

    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="source went away"):
        write_split(arrow_tables(failing(), FEATURES, 2), FEATURES, tmp_path, "data", "1KB", total=ROWS, workers=2)


def test_verify_hashes_files_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files are hashed at the same moment (a barrier of two parties would time out if they were hashed in turn)."""
    folder = build(build_config(tmp_path, make_image_folder(tmp_path / "images"), make_official_scorer(tmp_path / "models"), text_encoder="none"))
    barrier, original = threading.Barrier(2, timeout=10), LocalFolder.sha256

    def meeting(self: LocalFolder, path: str) -> str:
        if path.endswith(".parquet"):
            barrier.wait()
        return original(self, path)

    monkeypatch.setattr(LocalFolder, "sha256", meeting)
    assert verify(LocalFolder(folder)) == []
