"""Attach speed (DESIGN §3.4): DINOv2 patch tokens, flan-T5 caption embeddings and SD-VAE latents.

Each runs through the project's own code on the inputs the attach loader hands over (uint8
crops on the CPU, pinned on a GPU machine) and ends with the results on the CPU, as attaching
does: ``VisualEncoder`` (loaded from a saved folder, like any Hub model), ``TextEncoder.encode``
over 1,000 class prompts padded to L = 16 tokens, and ``VaeSpace.posterior`` as ``LatentColumn``
calls it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from transformers import BatchEncoding, T5EncoderModel

from benchmarks.gpu.measure import Row, count_flops, measure
from benchmarks.gpu.specs import Spec, build_dinov2, build_t5, build_vae
from d2c_pack.attach.text import TEXT_LENGTH, TextEncoder, class_prompts
from d2c_pack.attach.visual import VisualEncoder
from d2c_pack.models.latents import VaeSpace

T5_EOS, T5_FIRST_WORD = 1, 100


def measure_attach(spec: Spec, device: torch.device, peak: float, work: Path) -> dict[str, list[Row]]:
    return {"dinov2": _dinov2(spec, device, peak, work), "t5": [_t5(spec, device, peak)], "vae": _vae(spec, device, peak)}


def crops(batch: int, resolution: int, device: torch.device) -> torch.Tensor:
    """(B, 3, R, R) random uint8 crops on the CPU, pinned when a GPU will read them (as the DataLoader gives them)."""
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8)
    return images.pin_memory() if device.type == "cuda" else images


def _dinov2(spec: Spec, device: torch.device, peak: float, work: Path) -> list[Row]:
    folder = work / "dinov2"
    build_dinov2(spec).save_pretrained(folder)
    encoder = VisualEncoder(str(folder), spec.resolution, device)
    flops = count_flops(lambda: encoder(crops(1, spec.resolution, device)))
    name = f"DINOv2 at {encoder.input_size}px, {encoder.num_tokens} tokens (VisualEncoder)"
    rows = []
    for batch in spec.attach_batches:
        inputs = crops(batch, spec.resolution, device)
        rows.append(
            measure("attach", name, lambda: encoder(inputs), device, batch=batch, flops_per_item=flops, peak=peak, warmup=spec.warmup, iters=spec.iters)
        )
    return rows


def _t5(spec: Spec, device: torch.device, peak: float) -> Row:
    model = build_t5(spec, device)
    encoder = _text_encoder(model, device, spec.text_batch)
    prompts = class_prompts([f"class {c}" for c in range(spec.prompts)])
    flops = count_flops(lambda: encoder.encode(prompts[:1]))
    return measure(
        "attach", f"flan-T5 encoder, {len(prompts)} prompts × {TEXT_LENGTH} tokens (TextEncoder.encode)", lambda: encoder.encode(prompts), device,
        batch=spec.text_batch, items=len(prompts), flops_per_item=flops, peak=peak, warmup=1, iters=spec.iters, unit="prompts/s",
        attention=model.config._attn_implementation, tokenizer="word-id stand-in (no T5 vocabulary offline)",
    )  # fmt: skip


def _text_encoder(model: T5EncoderModel, device: torch.device, batch_size: int) -> TextEncoder:
    """The project's ``TextEncoder`` around a built model.

    Its ``__init__`` loads the model and tokenizer from a folder, and the T5 vocabulary cannot be
    had offline, so the object is assembled here; ``encode``, the loop that is timed, is its own.
    """
    encoder = TextEncoder.__new__(TextEncoder)
    encoder.name, encoder.device, encoder.max_length, encoder.batch_size = "flan-t5 (random weights)", device, TEXT_LENGTH, batch_size
    encoder.model, encoder.tokenizer, encoder.dim = model, _WordIds(), int(model.config.d_model)
    return encoder


class _WordIds:
    """Stands in for the T5 tokenizer: one id per word then EOS, truncated and right-padded to ``max_length``."""

    def __call__(self, texts: list[str], *, padding: str, max_length: int, truncation: bool, return_tensors: str) -> BatchEncoding:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [T5_FIRST_WORD + zlib.crc32(word.encode()) % 32000 for word in text.split()][: max_length - 1] + [T5_EOS]
            ids[row, : len(words)] = torch.tensor(words)
        return BatchEncoding({"input_ids": ids, "attention_mask": (ids != 0).long()})


def _vae(spec: Spec, device: torch.device, peak: float) -> list[Row]:
    space = VaeSpace(build_vae(spec, device))

    def latent_column(inputs: torch.Tensor) -> torch.Tensor:
        """What ``LatentColumn.compute`` does before building its Arrow table."""
        images = inputs.to(device).float() / 127.5 - 1  # (B, 3, R, R) in [-1, 1]
        return space.posterior(images).half().cpu()  # (B, 2C, R/8, R/8)

    flops = count_flops(lambda: latent_column(crops(1, spec.resolution, device)))
    rows = []
    for batch in spec.attach_batches:
        inputs = crops(batch, spec.resolution, device)
        rows.append(
            measure(
                "attach",
                f"SD-VAE encode at {spec.resolution}px (LatentColumn)",
                lambda: latent_column(inputs),
                device,
                batch=batch,
                flops_per_item=flops,
                peak=peak,
                warmup=spec.warmup,
                iters=spec.iters,
            )  # fmt: skip
        )
    return rows
