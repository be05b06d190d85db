"""The select path at ImageNet scale: a streamed score merge, scores read without their features,
features kept on disk and read a class at a time in float32."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d2c_pack.selection.chunks import ChunkCache, error_rows, list_array
from d2c_pack.selection.rowfile import RowFile, write_rows
from d2c_pack.selection.score import CACHE_SCHEMA, read_scores, score_features
from d2c_pack.selection.selectors import herding_select, kcenter_select

CHUNK = 64


def score_cache(root: Path, rows: int, dim: int, unreadable: tuple[int, ...] = (5, 70)) -> ChunkCache:
    """A score cache of ``rows`` random rows (a few unreadable), written chunk by chunk as scoring does."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, rows)
    cache = ChunkCache(root, {"test": "scale", "rows": rows, "dim": dim}, CACHE_SCHEMA, CHUNK)
    for number, start in enumerate(range(0, rows, CHUNK)):
        indices = [i for i in range(start, min(start + CHUNK, rows)) if i not in unreadable]
        losses = rng.random((len(indices), 4), dtype=np.float32)
        table = pa.table(
            {
                "source_index": indices, "source_id": [f"c{labels[i]}/{i}.jpg" for i in indices], "error": pa.nulls(len(indices), pa.string()),
                "label": labels[indices], "score": losses.mean(axis=1), "losses": list_array(losses),
                "feature": list_array(rng.standard_normal((len(indices), dim)).astype(np.float16)),
            },
            schema=CACHE_SCHEMA,
        )  # fmt: skip
        bad = [(i, f"c{labels[i]}/{i}.jpg", "cannot decode") for i in unreadable if start <= i < start + CHUNK]
        cache.add(number, pa.concat_tables([table, *([error_rows(CACHE_SCHEMA, bad)] if bad else [])]))
    return cache


def test_merge_writes_the_concatenated_chunks_one_chunk_at_a_time(tmp_path: Path) -> None:
    cache = score_cache(tmp_path, 300, 8)
    merged = tmp_path / "scores.parquet"
    cache.merge(range(300), merged)
    assert pq.read_table(merged).equals(pa.concat_tables(cache.read(range(300))))
    assert pq.ParquetFile(merged).metadata.num_row_groups == 5  # one per chunk: never more than a chunk in memory
    first = merged.read_bytes()
    cache.merge(range(300), merged)
    assert merged.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["scores.parquet"]  # no partial file left


def test_read_scores_leaves_the_features_on_disk(tmp_path: Path) -> None:
    rows, dim = 2000, 1024  # the features are 4 MB, everything else about 150 kB
    merged = tmp_path / "scores.parquet"
    score_cache(tmp_path, rows, dim).merge(range(rows), merged)
    tracemalloc.start()
    scores = read_scores(merged)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < rows * dim * 2 / 4  # NumPy buffers are traced: no (N, D) array was made
    assert len(scores) == rows - 2 and [e[0] for e in scores.errors] == [5, 70]
    assert not (tmp_path / "features.npy").exists()
    features = score_features(merged)
    table = pq.read_table(merged).filter(pa.compute.is_null(pq.read_table(merged)["error"]))
    expected = table["feature"].combine_chunks().flatten().to_numpy().reshape(rows - 2, dim)
    assert features.shape == (rows - 2, dim) and features.dtype == np.float16
    np.testing.assert_array_equal(features[np.arange(rows - 2)], expected.astype(np.float32))
    assert score_features(merged).path.stat().st_mtime_ns == features.path.stat().st_mtime_ns  # written once


def test_row_file_reads_any_rows_as_float32(tmp_path: Path) -> None:
    array = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float16)
    rows = write_rows(tmp_path / "rows.npy", 500, (array[i : i + 64] for i in range(0, 500, 64)))
    assert np.array_equal(np.load(tmp_path / "rows.npy"), array)  # a plain .npy file
    for positions in ([], [7], [499, 3, 4, 5, 3, 0], np.arange(500)[::-1]):
        got = rows[np.asarray(positions, dtype=np.int64)]
        assert got.dtype == np.float32 and got.shape == (len(positions), 3)
        np.testing.assert_array_equal(got, array[positions].astype(np.float32))
    with pytest.raises(IndexError):
        rows[np.array([500])]
    with pytest.raises(ValueError):
        write_rows(tmp_path / "short.npy", 501, [array])
    assert len(RowFile(tmp_path / "rows.npy")) == 500


class ClassRows:
    """Float16 features that record every gather: the selectors must ask for one class at a time."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels, self.gathers = features, labels, []

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        self.gathers.append(np.asarray(positions))
        return self.features[positions]


@pytest.mark.parametrize("selector", [kcenter_select, herding_select])
def test_feature_selectors_gather_one_class_at_a_time(tmp_path: Path, selector) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 400)
    features = rng.standard_normal((400, 16)).astype(np.float16)
    recorder = ClassRows(features, labels)
    picks = selector(recorder, labels, 6)
    assert len(recorder.gathers) == 5
    for gathered in recorder.gathers:
        assert len(set(labels[gathered].tolist())) == 1 and len(gathered) == (labels == labels[gathered[0]]).sum()
    assert picks.tolist() == selector(features.astype(np.float32), labels, 6).tolist()
    on_disk = write_rows(tmp_path / "features.npy", 400, [features])
    assert selector(on_disk, labels, 6).tolist() == picks.tolist()
