"""benchmarks/package_scale.py at its tiny size: the figures are sane and packaging holds no second copy on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.package_scale import main


def test_tiny_run_reports_rate_memory_and_disk(tmp_path: Path) -> None:
    """``python benchmarks/package_scale.py --tiny``, run as its ``main`` in this process: its stages fork from it, its imports done."""
    out, work = tmp_path / "package_scale.json", tmp_path / "work"
    work.mkdir()
    main(["--tiny", "--out", str(out), "--work", str(work)])
    assert list(work.iterdir()) == []  # the synthetic inputs and outputs are removed
    (result,) = json.loads(out.read_text())["results"]
    assert result["rows"] == 40 and list(result["stages"]) == ["package", "verify", "push", "train"]
    package = result["stages"]["package"]
    # Each rate is the stage's work over its own wall seconds, so the table's rates and seconds agree.
    assert package["rows_per_second"] == pytest.approx(40 / package["seconds"]) and 50 * 2**20 < package["peak_rss_bytes"] < 8 * 2**30
    assert 40 * 400_000 < package["output_bytes"] < 40 * 800_000  # ~562 kB a row, as ImageNet rows with every Attach column
    assert package["peak_extra_disk_bytes"] <= 0.1 * package["output_bytes"]  # the shards are the only copy
    verify = result["stages"]["verify"]
    assert verify["bytes_per_second"] * verify["seconds"] == pytest.approx(package["output_bytes"]) and verify["output_bytes"] == 0
    push = result["stages"]["push"]
    assert push["uploaded_bytes"] >= package["output_bytes"] and push["peak_extra_disk_bytes"] <= 0  # nothing cached client-side
    assert push["bytes_per_second"] == pytest.approx(push["uploaded_bytes"] / push["seconds"])
    train = result["stages"]["train"]
    assert (train["steps"], train["batch_size"]) == (2, 8)
    # The trainer's and the reader's rows/s are measured inside the stage: their 16 rows take less than its wall seconds.
    assert 16 / train["rows_per_second"] < train["seconds"] and 16 / train["reader_rows_per_second"] < train["seconds"]
    assert train["datasets_cache_bytes"] == 0 and train["peak_extra_disk_bytes"] <= 0  # read in place: no copy anywhere
