"""The GPU benchmark's one command runs end to end at tiny sizes on the CPU and writes every section, each row with its status
and an MFU that is its FLOP rate over the stated peak; the datasheet peaks are matched from the device name."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks.gpu.measure import datasheet_peak, mfu_peak
from benchmarks.gpu.run import main

LADDER = ("fp32 baseline", "bf16 autocast", "SDPA flash", "torch.compile", "fused AdamW", "on every batch", "channels-last VAE", "CUDA graphs")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python benchmarks/gpu/run.py --tiny --device cpu --json OUT``, run as its ``main`` in this process (no second interpreter importing torch)."""
    out = tmp_path_factory.mktemp("gpu-bench") / "gpu.json"
    threads, printed = torch.get_num_threads(), io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--tiny", "--device", "cpu", "--json", str(out)])
    assert torch.get_num_threads() == threads  # --tiny's single thread is the benchmark's alone
    assert "goals" in printed.getvalue()
    return json.loads(out.read_text())


def _measured(row: dict, peak: float | None = None, devices: int = 1) -> None:
    """A measured row: its MFU is exactly its model FLOP/s over the peak (per device)."""
    assert row["status"] == "ok" and row["reason"] is None, row
    assert row["rate"] > 0 and row["flops_per_item"] > 0, row
    if peak is not None:
        assert row["mfu"] == pytest.approx(row["rate"] * row["flops_per_item"] / peak / devices, rel=1e-9), row


def test_header_and_peak(result: dict) -> None:
    assert result["tiny"] is True
    for key in ("device", "torch", "date", "command"):
        assert result[key], key
    assert "--tiny" in result["command"]
    peak = result["peak"]
    # A CPU has no datasheet entry: MFU is against the measured matmul, and the JSON says so.
    assert peak["source"] == "measured matmul" and peak["card"] is None and peak["datasheet_tflops"] is None
    assert peak["flops_per_s"] == pytest.approx(peak["measured_tflops"] * 1e12) and peak["tflops"] == pytest.approx(peak["measured_tflops"])
    assert peak["flops_per_s"] > 0


def test_every_mfu_is_the_rate_over_the_stated_peak(result: dict) -> None:
    peak = result["peak"]["flops_per_s"]
    rows = [
        *result["scoring"]["sweep"], result["scoring"]["end_to_end"], *(r for rows in result["attach"].values() for r in rows),
        result["training"]["precomputed"], result["training"]["online"], result["training"]["trainer"], *result["sampling"],
        *(r for r in result["variants"] if r["status"] == "ok"),
    ]  # fmt: skip
    assert len(rows) == 4 + 1 + 3 + 3 + 2 + 7
    for row in rows:
        _measured(row, peak)


@pytest.mark.parametrize(
    ("name", "card", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756),
        ("NVIDIA H200", "H200", 989),
        ("NVIDIA A100-SXM4-80GB", "A100", 312),
        ("NVIDIA A100 80GB PCIe", "A100", 312),
    ],
)
def test_mfu_is_against_the_datasheet_peak_of_a_known_gpu(name: str, card: str, tflops: float) -> None:
    assert datasheet_peak(name) == (card, tflops * 1e12)
    peak = mfu_peak(name, measured=1.3 * tflops * 1e12)  # a matmul reads high against the datasheet: it is only printed beside it
    assert (peak.flops_per_s, peak.source, peak.measured_flops_per_s) == (tflops * 1e12, "datasheet", 1.3 * tflops * 1e12)


def test_an_unknown_device_falls_back_to_the_measured_peak() -> None:
    assert datasheet_peak("NVIDIA GeForce RTX 4090") is None
    assert mfu_peak("", measured=2e13).source == "measured matmul"


def test_scoring(result: dict) -> None:
    sweep = result["scoring"]["sweep"]
    assert {row["batch"] for row in sweep} == {4, 16}
    assert {row["name"].split(", ")[-1] for row in sweep} == {"backbone only", "VAE + backbone"}
    for row in sweep:
        _measured(row)
    end_to_end = result["scoring"]["end_to_end"]
    _measured(end_to_end)
    assert "JPEG files (score_source)" in end_to_end["name"]
    assert end_to_end["extra"]["workers"] == 1  # --tiny's worker count, used by score_source itself
    assert end_to_end["extra"]["images_timed"] >= 48
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


def test_training_through_train(result: dict) -> None:
    trainer = result["training"]["trainer"]
    _measured(trainer)
    assert "train()" in trainer["name"] and trainer["batch"] == 8
    extra = trainer["extra"]
    assert (extra["steps_timed"], extra["warmup_steps"], extra["processes"], extra["ddp"]) == (20, 5, 1, False)
    assert trainer["flops_per_item"] == result["training"]["precomputed"]["flops_per_item"]  # the same model and losses as the step
    assert result["goals"][3]["measured"] == trainer["mfu"]


def test_sampling(result: dict) -> None:
    sde, euler = result["sampling"]
    for row in (sde, euler):
        _measured(row)
        assert (row["extra"]["cfg_scale"], row["extra"]["guidance_interval"], row["extra"]["guidance_time"]) == (1.8, [0.0, 0.7], "repa")
    assert (sde["extra"]["sampler"], sde["extra"]["sampling_steps"], euler["extra"]["sampler"], euler["extra"]["sampling_steps"]) == ("euler-maruyama", 250, "euler", 50)
    # Guidance runs the network twice on part of the steps: between one and two evaluations per step.
    assert 250 < sde["extra"]["network_evaluations_per_image"] < 500
    assert 50 < euler["extra"]["network_evaluations_per_image"] < 100
    assert sde["flops_per_item"] > 4 * euler["flops_per_item"]


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
