"""benchmarks/sample_ranks.py at its tiny size: 1 process and 2 torchrun ranks time the same .npz, and it is identical."""

from __future__ import annotations

from pathlib import Path

from conftest import run_tiny_benchmark


def test_tiny_run_times_both_and_finds_the_files_identical(tmp_path: Path) -> None:
    (result,) = run_tiny_benchmark("sample_ranks.py", tmp_path, timeout=300)["results"]
    assert (result["num_samples"], result["sampling_steps"], result["ranks"]) == (6, 2, 2)
    assert result["identical"] is True
    (one,), (ranks,) = result["one_process_seconds"], result["ranks_seconds"]  # --tiny runs each once
    assert one > 0 and ranks > 0 and result["ratio"] == ranks / one
