"""The GPU benchmark's one command runs end to end at tiny sizes on the CPU and writes every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LADDER = ("fp32 baseline", "bf16 autocast", "SDPA flash", "torch.compile", "fused AdamW", "on every batch", "channels-last VAE", "CUDA graphs")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-bench") / "gpu.json"
    command = [sys.executable, "benchmarks/gpu/run.py", "--tiny", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "goals" in done.stdout
    return json.loads(out.read_text())


def _measured(row: dict) -> None:
    assert row["status"] == "ok", row
    assert row["rate"] > 0, row
    assert 0 < row["mfu"] < 1.5, row
    assert row["flops_per_item"] > 0, row


def test_header_and_peak(result: dict) -> None:
    assert result["tiny"] is True
    for key in ("device", "torch", "date", "command"):
        assert result[key], key
    assert "--tiny" in result["command"]
    assert result["peak"]["flops_per_s"] > 0


def test_scoring(result: dict) -> None:
    sweep = result["scoring"]["sweep"]
    assert {row["batch"] for row in sweep} == {4, 16}
    assert {row["name"].split(", ")[-1] for row in sweep} == {"backbone only", "VAE + backbone"}
    for row in sweep:
        _measured(row)
    end_to_end = result["scoring"]["end_to_end"]
    _measured(end_to_end)
    assert end_to_end["extra"]["images_timed"] > 0
    summary = result["scoring"]["summary"]
    assert summary["end_to_end_share_of_backbone"] > 0
    assert summary["imagenet_hours"] > 0
    assert summary["vae_encoder_flops_per_image"] > 0


def test_attach(result: dict) -> None:
    for model in ("dinov2", "t5", "vae"):
        assert result["attach"][model], model
        for row in result["attach"][model]:
            _measured(row)
    assert result["attach"]["t5"][0]["unit"] == "prompts/s"


def test_training(result: dict) -> None:
    training = result["training"]
    for name in ("precomputed", "online"):
        _measured(training[name])
    # the online step runs the SD-VAE and DINOv2 as well: more FLOPs per image
    assert training["online"]["flops_per_item"] > training["precomputed"]["flops_per_item"]
    assert training["precomputed_over_online"] > 0


def test_variants(result: dict) -> None:
    rows = result["variants"]
    assert len(rows) == len(LADDER)
    for row, name in zip(rows, LADDER):
        assert name in row["name"], (name, row["name"])
    for row in rows:
        if "CUDA graphs" in row["name"]:
            assert row["status"] == "skipped" and row["reason"], row
        else:
            _measured(row)


def test_attention_paths_and_goals(result: dict) -> None:
    assert "scaled_dot_product_attention" in result["attention"]["sit_blocks"]
    assert [goal["target"] for goal in result["goals"]] == [0.8, 0.6, 1.5, 0.45]
