"""What the GPU benchmark runs: the real architectures and sizes, or tiny ones of the same kind.

No weights can be downloaded, and speed does not depend on them, so every model is built
with random weights from a config written here: the published configs of
``facebook/dinov2-base``, ``google/flan-t5-xl`` (encoder) and ``stabilityai/sd-vae-ft-ema``,
and the project's own DiT/SiT constructors. ``TINY`` keeps every architecture and code path
and shrinks widths, depths, resolution, batches and iterations so that the whole benchmark
runs on a CPU in well under a minute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import Dinov2Config, Dinov2Model, T5Config, T5EncoderModel

from d2c_pack.models.checkpoint import OFFICIAL_VAE, BackboneConfig, backbone_config

IMAGENET_TRAIN_IMAGES = 1_281_167
NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Spec:
    """Sizes of one benchmark run; every figure in the JSON is measured with these."""

    tiny: bool
    scorer: str  # BACKBONES name of the frozen scorer
    trainee: str  # BACKBONES name of the trained SiT
    resolution: int  # R of the ADM crop
    timesteps: int  # |T| noisy copies per scored image
    score_batches: tuple[int, ...]  # images per scoring call, swept
    attach_batches: tuple[int, ...]  # images per DINOv2 / VAE call
    prompts: int  # captions encoded by the text encoder
    text_batch: int  # captions per text-encoder call (TextEncoder's default)
    train_batch: int | None  # fixed training batch; None: the largest that fits, found by doubling
    train_batch_limit: int  # the doubling search stops here
    warmup: int  # untimed calls before every timing
    iters: int  # timed calls
    e2e_images: int  # images timed end to end from JPEG files, after the warm-up batches
    sample_images: int  # images drawn per sampling setting
    sample_batch: int  # images per sampling batch
    peak_size: int  # side of the square matmul that measures the peak
    peak_dtype: torch.dtype
    compile_backend: str  # torch.compile backend of the compile variants
    vae: dict[str, Any]
    dinov2: dict[str, Any]
    t5: dict[str, Any]

    @property
    def text_dim(self) -> int:
        return self.t5["d_model"]

    @property
    def visual_dim(self) -> int:
        return self.dinov2["hidden_size"]


FULL = Spec(
    tiny=False,
    scorer="DiT-XL/2",
    trainee="SiT-XL/2",
    resolution=256,
    timesteps=8,
    score_batches=(16, 32, 64, 128, 256),
    attach_batches=(32, 256),
    prompts=1000,
    text_batch=64,
    train_batch=None,
    train_batch_limit=1024,
    warmup=3,  # compiled variants compile in the first call; CUDA graphs record in the second
    iters=6,
    e2e_images=2048,
    sample_images=64,
    sample_batch=64,
    peak_size=8192,
    peak_dtype=torch.bfloat16,
    compile_backend="inductor",
    # stabilityai/sd-vae-ft-ema config.json
    vae=dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
    ),  # fmt: skip
    # facebook/dinov2-base config.json (trained at 518; run at 224 as DESIGN §3.4 says)
    dinov2=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0),
    # google/flan-t5-xl config.json, encoder only
    t5=dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32, feed_forward_proj="gated-gelu"),
)

TINY = dataclasses.replace(
    FULL,
    tiny=True,
    scorer="DiT-T/2",
    trainee="SiT-T/2",
    resolution=64,
    score_batches=(4, 16),
    attach_batches=(8,),
    train_batch=8,
    train_batch_limit=8,
    warmup=1,
    iters=1,
    e2e_images=48,
    sample_images=4,
    sample_batch=4,
    peak_size=512,
    peak_dtype=torch.float32,
    # inductor's C++ code generation takes minutes on 2 CPU cores; aot_eager still traces the model with dynamo and AOTAutograd
    compile_backend="aot_eager",
    vae=FULL.vae | dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=64),
    dinov2=FULL.dinov2 | dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    t5=FULL.t5 | dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
)


def scorer_config(spec: Spec) -> BackboneConfig:
    """The scorer's config in the SD-VAE latent space (4 channels, R/8), as the official DiT-XL/2 256."""
    return backbone_config(spec.scorer, image_size=spec.resolution, num_classes=NUM_CLASSES, vae=OFFICIAL_VAE, in_channels=4)


def build_vae(spec: Spec, device: torch.device) -> AutoencoderKL:
    """The SD-VAE (fp32, eval), initialised directly on ``device``."""
    with device:
        return AutoencoderKL(**spec.vae).eval().requires_grad_(False)


def build_dinov2(spec: Spec) -> Dinov2Model:
    """DINOv2 with the library's default attention implementation, on the CPU (the attach path loads it from a folder)."""
    return Dinov2Model(Dinov2Config(**spec.dinov2)).eval()


def build_t5(spec: Spec, device: torch.device) -> T5EncoderModel:
    """The flan-T5 encoder in fp32 (as TextEncoder loads it), initialised directly on ``device``."""
    with device:
        return T5EncoderModel(T5Config(**spec.t5)).eval().requires_grad_(False)
