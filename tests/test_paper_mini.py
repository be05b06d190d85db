"""benchmarks/paper_mini.py at its tiny size (the recipe's `tiny:` overrides): every table row, the JSON and the plot.

The script's ``main`` runs in this process (twice: the run, then the re-run that keeps the finished runs), which
saves two interpreters importing the tool; ``python benchmarks/paper_mini.py`` calls the same ``main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from benchmarks.paper_mini import main

SELECTION_ROWS = ["random", "kcenter", "herding", "min", "max", "interval", "full data"]
ATTACH_ROWS = ["none", "text", "visual", "both"]


def test_the_miniature_runs_every_configuration_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "mini"
    threads = torch.get_num_threads()
    main(["--tiny", "--out", str(out), "--report-dir", str(tmp_path / "report")])
    assert torch.get_num_threads() == threads  # --tiny's single thread is the benchmark's alone
    report = (tmp_path / "report" / "paper_mini.md").read_text()
    selection, attach = report.split("Attach ablation")
    for name in SELECTION_ROWS:
        assert f"| {name} | " in selection
    for name in ATTACH_ROWS:
        assert f"| {name} | " in attach
    payload = json.loads((tmp_path / "report" / "paper_mini.json").read_text())
    assert len(payload["runs"]) == 10 and all(len(run["curve"]) == 2 for run in payload["runs"])  # 4 steps, evaluated every 2
    assert all(row["fid_mean"] > 0 and 0 <= row["accuracy_mean"] <= 1 for row in payload["summary"])
    subsets = {run["name"]: run["data"] for run in payload["runs"]}
    assert subsets["none"] == subsets["text"] == subsets["visual"] == subsets["interval"]  # the ablation trains on the D2C subset
    assert len({subsets[name] for name in SELECTION_ROWS}) == len(SELECTION_ROWS)  # each selector its own subset
    assert Image.open(tmp_path / "report" / "fid_vs_steps.png").size[0] > 0
    main(["--tiny", "--out", str(out)])
    assert json.loads((out / "paper_mini.json").read_text())["runs"] == payload["runs"]  # finished runs are kept
