"""Sampling speed: the project's ``generate`` on the model the training row saved, as ``d2c-pack sample`` draws.

Two settings, each a row:

- **SDE 250**: Euler–Maruyama with 250 steps, CFG 1.8 on REPA's guidance interval [0, 0.7]
  (REPA time, 1 = noise: guidance on SiT's t ∈ [0.3, 1]) — how SiT/REPA report FID-50K;
- **Euler 50**: the ODE with 50 steps, the same guidance.

Each sample's noise and Brownian increments come from its own CPU generator, and every batch is
decoded by the SD-VAE (random weights, the real architecture) and brought back to the host, as the
tool does. FLOPs per image: the network's FLOPs per sample (counted on one image drawn with 2 and
3 steps) times the samples the timed run passed through it (a guided step passes each twice),
plus the VAE decoding.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.gpu.measure import Row, count_flops, failure, rate_row, release_memory, synchronize
from benchmarks.gpu.specs import Spec, build_vae
from d2c_pack.diffusion.sampling import GuidanceInterval, Sampling
from d2c_pack.evaluation.sample import generate, load_for_sampling, sample_labels

REPA_GUIDANCE = GuidanceInterval(0.0, 0.7, time="repa")
SETTINGS = {
    "SDE 250 steps, CFG 1.8 on [0, 0.7]": Sampling(sampler="euler-maruyama", steps=250, cfg_scale=1.8, guidance_interval=REPA_GUIDANCE),
    "Euler 50 steps, CFG 1.8 on [0, 0.7]": Sampling(sampler="euler", steps=50, cfg_scale=1.8, guidance_interval=REPA_GUIDANCE),
}


def measure_sampling(spec: Spec, device: torch.device, peak: float, model: Path, work: Path) -> list[Row]:
    """A row per setting: ``spec.sample_images`` images in batches of ``spec.sample_batch``, after a short warm-up run.

    ``model`` is a saved model folder; the SD-VAE is saved into ``work`` and loaded from there, as a local ``--vae``.
    """
    build_vae(spec, torch.device("cpu")).save_pretrained(work / "vae")
    network, config, class_text = load_for_sampling(model, device, vae=str(work / "vae"))
    config.vae_sha256 = None  # the synthetic build's latents come from no VAE: the benchmark's random SD-VAE decodes them
    labels = sample_labels(spec.sample_images, config.num_classes, "random", seed=0)
    items = _NetworkItems(network)

    def draw(labels: torch.Tensor, setting: Sampling) -> torch.Tensor:
        return generate(network, config, labels, setting, class_text=class_text)

    rows = []
    for name, setting in SETTINGS.items():
        name, setting = f"{spec.trainee} {name}", dataclasses.replace(setting, batch_size=spec.sample_batch)
        try:
            per_item, per_image = _model_flops(draw, labels[:1], setting, items)
            draw(labels[: setting.batch_size], dataclasses.replace(setting, steps=2))  # warm-up
            synchronize(device)
            items.count = 0
            tic = time.perf_counter()
            draw(labels, setting)  # ends with the images on the host
            seconds = time.perf_counter() - tic
        except Exception as error:  # out of memory or a sampler that raises: a failed row, and the next setting still runs
            rows.append(Row("sampling", name, batch=setting.batch_size, status="failed", reason=failure(error)))
            continue
        finally:
            release_memory(device)
        flops = per_item * items.count / len(labels) + per_image
        rows.append(
            rate_row(
                "sampling", name, batch=setting.batch_size, items=len(labels), seconds=seconds, flops_per_item=flops, peak=peak,
                network_evaluations_per_image=items.count / len(labels), **setting.record(),
            )  # fmt: skip
        )
    items.handle.remove()
    return rows


class _NetworkItems:
    """Counts the samples that go through the network (a guided step runs each twice: conditional and null)."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self._add)

    def _add(self, module: torch.nn.Module, args: tuple) -> None:
        self.count += args[0].shape[0]


def _model_flops(draw: Callable[[torch.Tensor, Sampling], object], label: torch.Tensor, setting: Sampling, items: _NetworkItems) -> tuple[float, float]:
    """(FLOPs per sample through the network, FLOPs per image outside it: the VAE decoding), counted on one image drawn with 2 and 3 steps.

    Counting all 250 steps under ``FlopCounterMode`` would take longer than the timing itself; every network
    call costs the same per sample, so two short runs give both terms.
    """
    counted = []
    for steps in (2, 3):
        items.count = 0
        flops = count_flops(lambda: draw(label, dataclasses.replace(setting, steps=steps, batch_size=1)))
        counted.append((flops, items.count))
    (flops_2, items_2), (flops_3, items_3) = counted
    per_item = (flops_3 - flops_2) / (items_3 - items_2)
    return per_item, flops_2 - per_item * items_2
