"""`d2c-pack demo`: the whole flow on the embedded digits in one command, at a tiny training size."""

from __future__ import annotations

import json
from pathlib import Path

import hub_server
from hub_server import HubServer
from PIL import Image
from typer.testing import CliRunner

from d2c_pack.cli import app

hub = hub_server.hub
TINY = ["--steps", "3", "--num-samples", "20", "--sampling-steps", "2"]


def test_demo_builds_publishes_loads_trains_samples_and_evaluates(hub: HubServer, demo_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--push-to", "tester/digits-d2c", *TINY], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    table = result.output
    for stage in ("subset (build)", "publish", "load_dataset", "model (train)", "sample grid", "evaluation"):
        assert stage in table
    assert 'load_dataset("tester/digits-d2c", revision="v1.0", split="train")' in table
    assert "180 rows" in table  # loaded back from the (local) Hub: 10% of 1,797 digits
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["reference_images"] == 1797 and metrics["num_samples"] == 20 and metrics["fid"] > 0
    assert f"FID {metrics['fid']:.3f}" in table
    grid = Image.open(out / "samples.png").convert("L")
    assert grid.size[0] > 8 * 33 + 1 and grid.size[1] == 10 * 33 + 1  # 8 samples a row, a row per digit, and a label column
    margin = grid.size[0] - (8 * 33 + 1)
    for row in range(10):  # each row's label: dark pixels left of the samples
        assert grid.crop((0, 1 + row * 33, margin, (row + 1) * 33)).getextrema()[0] < 128
    assert (out / "run" / "model" / "model.safetensors").exists()
