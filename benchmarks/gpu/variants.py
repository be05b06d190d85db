"""Optimisation variants of the training step, each measured as its own row, and the attention paths in use.

The ladder adds one optimisation at a time to the SiT step fed precomputed columns:

    fp32 (eager attention, foreach AdamW) → + bf16 autocast and TF32 → + SDPA flash attention
    → + torch.compile → + fused AdamW

then runs the online step (SD-VAE + DINOv2 on every batch) with those settings, before and
after channels-last VAE weights and activations with pinned-memory host batches, and last
adds CUDA graphs (``torch.compile(mode="reduce-overhead")``) to the precomputed step.

The trainer's ``_train_step`` fixes bf16 autocast on, so the ladder's step is written here
with switches; it computes what ``_train_step`` computes (same model, losses, clipping and
EMA) but draws its randomness on the device and logs nothing. A variant that cannot run on
this device is a skipped row with the reason; one that raises is a failed row with the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.gpu.measure import Row, failure, measure, release_memory
from benchmarks.gpu.training import SD_VAE_SCALE, Batch, TrainingSetup, host_batch, online_visual_tokens
from d2c_pack.diffusion.transport import interpolate
from d2c_pack.training.loop import alignment_loss, update_ema

CLASS_DROPOUT, PROJ_COEFF, GRAD_CLIP, EMA_DECAY, LR = 0.1, 0.5, 1.0, 0.9999, 1e-4


@dataclasses.dataclass(frozen=True)
class Variant:
    """One rung of the ladder: which optimisations are on."""

    name: str
    bf16: bool = False  # bf16 autocast and TF32 matmuls / convolutions
    sdpa: bool = False  # F.scaled_dot_product_attention in the SiT blocks (timm's fused_attn) instead of eager attention
    compile: str | None = None  # torch.compile mode ("default", "reduce-overhead"); None: eager
    fused_adamw: bool = False  # AdamW(fused=True) instead of the foreach implementation
    online: bool = False  # SD-VAE and DINOv2 run on every batch of uint8 crops
    channels_last: bool = False  # VAE weights and input images in channels-last layout
    pinned: bool = False  # host batches in pinned memory, copied asynchronously
    needs_cuda: str | None = None  # why it cannot run without a GPU


_FAST = dict(bf16=True, sdpa=True, compile="default", fused_adamw=True)
LADDER = (
    Variant("fp32 baseline (eager attention, foreach AdamW)"),
    Variant("+ bf16 autocast + TF32", bf16=True),
    Variant("+ SDPA flash attention", bf16=True, sdpa=True),
    Variant("+ torch.compile", bf16=True, sdpa=True, compile="default"),
    Variant("+ fused AdamW", **_FAST),
    Variant("SD-VAE + DINOv2 on every batch (NCHW VAE, pageable batches)", **_FAST, online=True),
    Variant("+ channels-last VAE, pinned-memory batches", **_FAST, online=True, channels_last=True, pinned=True),
    Variant("+ CUDA graphs (compile mode reduce-overhead)", **{**_FAST, "compile": "reduce-overhead"}, pinned=True, needs_cuda="CUDA graphs need a GPU"),
)


def measure_variants(setup: TrainingSetup, peak: float, batch: int, flops: dict[str, float]) -> list[Row]:
    """Every rung of the ladder at ``batch``; ``flops`` holds the model FLOPs per image of the precomputed and online steps.

    The precomputed rows also say how many times faster than the fp32 baseline they run.
    """
    compiled: dict[str, Callable] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    fused_attn = [block.attn.fused_attn for block in setup.run.model.blocks]
    try:
        rows = [_variant_row(setup, variant, compiled, peak, batch, flops) for variant in LADDER]
    finally:  # the trainer's settings back
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        for block, fused in zip(setup.run.model.blocks, fused_attn):
            block.attn.fused_attn = fused
        setup.vae.vae.to(memory_format=torch.contiguous_format)
    baseline = rows[0].rate if rows[0].status == "ok" else None
    for row in rows:
        if baseline and row.status == "ok" and row.name.startswith("precomputed"):
            row.extra["vs_fp32_baseline"] = row.rate / baseline
    return rows


def _variant_row(setup: TrainingSetup, variant: Variant, compiled: dict[str, Callable], peak: float, batch: int, flops: dict[str, float]) -> Row:
    name = f"{'online' if variant.online else 'precomputed'}: {variant.name}"
    if variant.needs_cuda and setup.device.type != "cuda":
        return Row("variants", name, batch=batch, status="skipped", reason=variant.needs_cuda)
    try:
        step = _ladder_step(setup, variant, compiled, batch)
        return measure(
            "variants", name, step, setup.device, batch=batch, flops_per_item=flops["online" if variant.online else "precomputed"],
            peak=peak, warmup=setup.spec.warmup, iters=setup.spec.iters, **_notes(setup, variant),
        )  # fmt: skip
    except Exception as error:  # a failed optimisation is a result: record it, and the next rungs still run
        return Row("variants", name, batch=batch, status="failed", reason=failure(error))
    finally:
        release_memory(setup.device)


def _notes(setup: TrainingSetup, variant: Variant) -> dict:
    if variant.compile and setup.spec.compile_backend != "inductor":
        return {"note": f"compile backend {setup.spec.compile_backend} (tiny: no inductor code generation)"}
    return {}


def _ladder_step(setup: TrainingSetup, variant: Variant, compiled: dict[str, Callable], batch: int) -> Callable[[], None]:
    """The settings of ``variant`` applied, and its step on one host batch."""
    device, model = setup.device, setup.run.model
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant.bf16
    for block in model.blocks:
        block.attn.fused_attn = variant.sdpa
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    setup.vae.vae.to(memory_format=memory_format)
    forward = model
    if variant.compile:
        if variant.compile not in compiled:
            mode = None if variant.compile == "default" else variant.compile
            compiled[variant.compile] = torch.compile(model, mode=mode, backend=setup.spec.compile_backend)
        forward = compiled[variant.compile]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, betas=(0.9, 0.999), weight_decay=0.0, fused=variant.fused_adamw or None)
    host = host_batch(setup, batch, online=variant.online, pinned=variant.pinned and device.type == "cuda")

    def step() -> None:
        if variant.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        inputs = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        x1, tokens = _targets(setup, variant, inputs, memory_format)
        n = len(x1)
        t = torch.rand(n, device=device)
        xt, ut = interpolate(x1, torch.randn_like(x1), t)
        drop_class, drop_text = (torch.rand(2, n, device=device) < CLASS_DROPOUT).unbind()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            out, projection = forward(
                xt, t, inputs["label"], inputs["text_embedding"], inputs["text_mask"],
                return_projection=True, drop_class=drop_class, drop_text=drop_text,
            )  # fmt: skip
        loss = ((out[:, : x1.shape[1]].float() - ut) ** 2).mean() + PROJ_COEFF * alignment_loss(projection.float(), tokens.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        optimizer.step()
        update_ema(setup.run.ema, model, EMA_DECAY)

    return step


@torch.no_grad()
def _targets(setup: TrainingSetup, variant: Variant, inputs: Batch, memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """x₁ (a scaled latent sample) and the visual tokens: from the columns, or from the VAE and DINOv2 on the crops."""
    if variant.online:
        images = (inputs["crops"].float() / 127.5 - 1).contiguous(memory_format=memory_format)
        moments = setup.vae.posterior(images).contiguous()  # fp32 and outside autocast, as the trainer runs it
        tokens = online_visual_tokens(setup.dinov2, inputs["crops"], setup.spec.resolution)
    else:
        moments, tokens = inputs["latent"].float(), inputs["visual_tokens"]
    mean, std = moments.chunk(2, dim=1)
    return (mean + std * torch.randn_like(mean)) * SD_VAE_SCALE, tokens


def attention_paths(setup: TrainingSetup, t5_attention: str | None) -> dict:
    """Which attention kernels the models use, and whether flash attention runs at the SiT's shape on this device."""
    model = setup.run.model
    heads = model.num_heads
    tokens, dim = model.pos_embed.shape[1], model.pos_embed.shape[2]
    q = torch.randn(2, heads, tokens, dim // heads, device=setup.device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q)
        flash = "runs"
    except RuntimeError as error:
        flash = f"unavailable: {failure(error)}"
    return {
        "sit_blocks": "F.scaled_dot_product_attention (timm fused_attn)" if all(b.attn.fused_attn for b in model.blocks) else "eager matmul + softmax",
        "flash_attention_at_sit_shape": flash,
        "dinov2": setup.dinov2.config._attn_implementation,
        "t5": t5_attention,
        "vae": sorted({type(p).__name__ for p in setup.vae.vae.attn_processors.values()}),
    }
