"""benchmarks/package_scale.py at its tiny size: the figures are sane and packaging holds no second copy on disk."""

from __future__ import annotations

from pathlib import Path

from conftest import run_tiny_benchmark


def test_tiny_run_reports_rate_memory_and_disk(tmp_path: Path) -> None:
    (result,) = run_tiny_benchmark("package_scale.py", tmp_path, timeout=600)["results"]
    assert result["rows"] == 40 and list(result["stages"]) == ["package", "verify", "push", "train"]
    package = result["stages"]["package"]
    assert package["rows_per_second"] > 0 and 50 * 2**20 < package["peak_rss_bytes"] < 8 * 2**30
    assert 40 * 400_000 < package["output_bytes"] < 40 * 800_000  # ~562 kB a row, as ImageNet rows with every Attach column
    assert package["peak_extra_disk_bytes"] <= 0.1 * package["output_bytes"]  # the shards are the only copy
    assert result["stages"]["verify"]["bytes_per_second"] > 0 and result["stages"]["verify"]["output_bytes"] == 0
    push = result["stages"]["push"]
    assert push["uploaded_bytes"] >= package["output_bytes"] and push["peak_extra_disk_bytes"] <= 0  # nothing cached client-side
    train = result["stages"]["train"]
    assert (train["steps"], train["batch_size"]) == (2, 8) and train["rows_per_second"] > 0 and train["reader_rows_per_second"] > 0
    assert train["datasets_cache_bytes"] == 0 and train["peak_extra_disk_bytes"] <= 0  # read in place: no copy anywhere
