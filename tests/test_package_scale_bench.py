"""benchmarks/package_scale.py at its tiny size: the figures are sane and packaging holds no second copy on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_rate_memory_and_disk(tmp_path: Path) -> None:
    out = tmp_path / "package_scale.json"
    command = [sys.executable, "benchmarks/package_scale.py", "--tiny", "--out", str(out), "--work", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    assert result["rows"] == 40 and list(result["stages"]) == ["package", "verify", "push"]
    package = result["stages"]["package"]
    assert package["rows_per_second"] > 0 and 50 * 2**20 < package["peak_rss_bytes"] < 8 * 2**30
    assert 40 * 400_000 < package["output_bytes"] < 40 * 800_000  # ~562 kB a row, as ImageNet rows with every Attach column
    assert package["peak_extra_disk_bytes"] <= 0.1 * package["output_bytes"]  # the shards are the only copy
    assert result["stages"]["verify"]["bytes_per_second"] > 0 and result["stages"]["verify"]["output_bytes"] == 0
    push = result["stages"]["push"]
    assert push["uploaded_bytes"] >= package["output_bytes"] and push["peak_extra_disk_bytes"] <= 0  # nothing cached client-side
    assert list(tmp_path.iterdir()) == [out]  # the synthetic output is removed
