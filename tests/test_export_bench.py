"""benchmarks/export_speed.py at its tiny size: both formats are timed, fresh and re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_times_both_formats(tmp_path: Path) -> None:
    out = tmp_path / "export_speed.json"
    done = subprocess.run([sys.executable, "benchmarks/export_speed.py", "--tiny", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["format"] for r in results] == ["repa", "imagefolder"] and all(r["rows"] == 24 for r in results)
    assert all(r["rows_per_second"] > 0 and r["bytes"] > 0 and r["rerun_seconds"] > 0 for r in results)
