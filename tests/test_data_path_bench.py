"""benchmarks/data_path.py at its tiny size: every path of the trainer's data reports its rows/s, and memory beats reading in place."""

from __future__ import annotations

from pathlib import Path

from conftest import run_tiny_benchmark


def test_tiny_run_reports_rows_per_second_of_every_path(tmp_path: Path) -> None:
    payload = run_tiny_benchmark("data_path.py", tmp_path, timeout=300)
    assert payload["batch_size"] == 16 and list(payload["results"]) == ["demo", "imagenet"]
    for row in payload["results"].values():
        assert row["rows"] == 64 and row["bytes_per_row"] > 0
        assert all(row[key] > 0 for key in ("decode_rows_per_second", "memory_gather", "memory_to_float32", "in_place", "datasets_torch"))
        assert row["memory_gather"] > row["in_place"]  # an index_select against decoding a row group per batch
    demo, imagenet = payload["results"]["demo"], payload["results"]["imagenet"]
    assert imagenet["bytes_per_row"] > demo["bytes_per_row"]
