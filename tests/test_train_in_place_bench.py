"""benchmarks/train_in_place.py at its tiny size: training reads a build in place and writes nothing to the datasets cache.

The script's ``main`` runs in this process (the trainer it measures is a process of its own, as always).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.train_in_place import main


def test_tiny_run_reports_rows_per_second_memory_and_no_extra_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train_in_place.json"
    tic = time.perf_counter()
    main(["--tiny", "--json", str(out)])
    seconds = time.perf_counter() - tic
    (result,) = json.loads(out.read_text())["results"]
    assert (result["model"], result["steps"], result["batch_size"]) == ("SiT-T/2", 4, 8)
    # Measured, not made up: the 4 × 8 rows at either rate take less time than the whole benchmark ran.
    assert 32 / result["train_rows_per_second"] < seconds and 32 / result["reader_rows_per_second"] < seconds
    table = " ".join(capsys.readouterr().out.split())  # the table a user reads shows the figures of the JSON
    assert f"{result['train_rows_per_second']:.1f}" in table and f"{result['reader_rows_per_second']:.1f}" in table
    assert 50 * 2**20 < result["peak_rss_bytes"] < 8 * 2**30
    assert result["peak_extra_disk_bytes"] == 0  # the shards are read where they are
