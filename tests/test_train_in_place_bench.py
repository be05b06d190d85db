"""benchmarks/train_in_place.py at its tiny size: training reads a build in place and writes nothing to the datasets cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_rows_per_second_memory_and_no_extra_disk(tmp_path: Path) -> None:
    out = tmp_path / "train_in_place.json"
    done = subprocess.run([sys.executable, "benchmarks/train_in_place.py", "--tiny", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    assert (result["model"], result["steps"], result["batch_size"]) == ("SiT-T/2", 4, 8)
    assert result["train_rows_per_second"] > 0 and result["reader_rows_per_second"] > 0
    assert 50 * 2**20 < result["peak_rss_bytes"] < 8 * 2**30
    assert result["peak_extra_disk_bytes"] == 0  # the shards are read where they are
