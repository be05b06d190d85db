"""The visual column of Attach (DESIGN §3.4): DINOv2 patch tokens and CLS token of each ADM crop.

Each R×R uint8 crop is scaled to [0, 1], ImageNet-normalised, then bicubic-resized to
S = 224·R/256 (224 at R=256), the size DINOv2's own evaluation uses. The encoder's last layer,
after the final layer norm, gives ``visual_tokens`` (its patch tokens, (S/patch)² of them: 256
at R=256) and ``visual_cls``.

Encoders are named as transformers models (``facebook/dinov2-base``, ``facebook/dinov2-with-registers-*``,
a local folder, ``demo:digits-encoder``) or timm ones (``timm/vit_base_patch14_dinov2.lvd142m``,
``hf-hub:timm/...``, or ``local-dir:FOLDER`` holding a timm export).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from d2c_pack.demo import resolve_model_path
from d2c_pack.errors import UserError, first_line
from d2c_pack.fingerprint import module_sha256, sha256_json

DEFAULT_VISUAL_ENCODER = "facebook/dinov2-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRANSFORMERS_TYPES = ("dinov2", "dinov2_with_registers")
_TIMM_PREFIXES = ("timm/", "hf-hub:", "local-dir:")


def encoder_input_size(resolution: int) -> int:
    """Side S of the encoder's input for crops of side R: 224·R/256, rounded down."""
    return 224 * resolution // 256


def dinov2_inputs(crops: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, R, R) uint8 crops → (B, 3, S, S) float32: /255, ImageNet-normalised, bicubic-resized to S."""
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1:] != (3, resolution, resolution):
        raise ValueError(f"expected uint8 crops of shape (B, 3, {resolution}, {resolution}), got {crops.dtype} {tuple(crops.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 3, 1, 1)
    pixels = (crops.float() / 255 - mean) / std  # (B, 3, R, R)
    size = encoder_input_size(resolution)
    # Antialiasing only matters (and only applies) when shrinking.
    return F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=size < resolution)


class _Backbone(NamedTuple):
    """A loaded encoder: ``tokens(pixels)`` is its normed last layer (B, num_prefix + N_tok, dim), CLS first."""

    model: torch.nn.Module
    tokens: Callable[[torch.Tensor], torch.Tensor]
    patch_size: int
    num_prefix: int
    dim: int


class VisualEncoder:
    """DINOv2 patch tokens and CLS token: transformers models (facebook/dinov2-*, with or without registers) or timm DINOv2 names."""

    name: str
    dim: int
    num_tokens: int

    def __init__(self, name_or_path: str, resolution: int, device: torch.device | str = "cpu"):
        self.name = name_or_path
        self.resolution = resolution
        self.input_size = encoder_input_size(resolution)
        self.device = torch.device(device)
        path = resolve_model_path(name_or_path)
        self._backbone = _load_timm(path, self.input_size) if path.startswith(_TIMM_PREFIXES) else _load_transformers(path)
        patch_size = self._backbone.patch_size
        if self.input_size % patch_size:
            raise UserError(
                f"resolution {resolution} gives {name_or_path} a {self.input_size}px input, "
                f"not a multiple of its {patch_size}px patches; choose R so that 224·R/256 is one"
            )
        self._backbone.model.to(self.device).eval().requires_grad_(False)
        self.dim = self._backbone.dim
        self.num_tokens = (self.input_size // patch_size) ** 2
        self._fingerprint: str | None = None

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) uint8 crops → patch tokens (B, N_tok, D) float16 and CLS (B, D) float32, on the CPU."""
        pixels = dinov2_inputs(crops.to(self.device), self.resolution)  # (B, 3, S, S)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            tokens = self._backbone.tokens(pixels)  # (B, prefix + N_tok, D): CLS, registers, patches
        patches = tokens[:, self._backbone.num_prefix :].to("cpu", torch.float16)  # (B, N_tok, D)
        cls = tokens[:, 0].to("cpu", torch.float32)  # (B, D)
        return patches, cls

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the weights and the input size: what the features depend on."""
        if self._fingerprint is None:
            self._fingerprint = sha256_json({"weights": module_sha256(self._backbone.model), "input_size": self.input_size})
        return self._fingerprint


def _load_timm(name: str, input_size: int) -> _Backbone:
    """A pretrained timm ViT without head, its position embedding resampled for ``input_size``.

    ``timm/<model>`` is the registry name ``<model>``, whose pretrained tag points at that Hub
    repository; ``hf-hub:`` and ``local-dir:`` names are timm's own and pass unchanged.
    """
    import timm  # a heavy import, only paid where a timm encoder is used

    try:
        model = timm.create_model(name.removeprefix("timm/"), pretrained=True, num_classes=0, img_size=input_size, dynamic_img_size=True)
    except (OSError, RuntimeError, TypeError, ValueError) as err:  # TypeError: not a ViT (no img_size)
        raise UserError(f"cannot load the timm visual encoder {name!r}: {first_line(err)}") from None
    if not hasattr(model, "num_prefix_tokens"):
        raise UserError(f"timm model {name!r} is not a ViT; the visual encoder must be a DINOv2 ViT")
    # forward_features ends with the final norm and keeps the prefix tokens (CLS, then registers).
    return _Backbone(model, model.forward_features, model.patch_embed.patch_size[0], model.num_prefix_tokens, model.num_features)


def _load_transformers(path: str) -> _Backbone:
    """The DINOv2 backbone (with or without registers) of a transformers checkpoint.

    A checkpoint saved with a head (``Dinov2ForImageClassification``) is loaded as saved and its
    backbone kept, so every weight is accounted for.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    if _looks_like_path(path) and not Path(path).is_dir():
        raise UserError(f"visual encoder {path!r}: no such model folder")
    try:
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in _TRANSFORMERS_TYPES:
            raise UserError(f"visual encoder {path!r} is a {config.model_type!r} model; expected one of {', '.join(_TRANSFORMERS_TYPES)}")
        with_head = any(name.endswith("ForImageClassification") for name in config.architectures or ())
        auto = AutoModelForImageClassification if with_head else AutoModel
        # Weights may be stored in float16 (the demo encoder); compute in float32.
        model = auto.from_pretrained(path, dtype=torch.float32).base_model
    except (OSError, ValueError) as err:  # ValueError: a config.json that names no known model type
        raise UserError(f"cannot load the visual encoder {path!r}: {first_line(err)}") from None

    def tokens(pixels: torch.Tensor) -> torch.Tensor:
        # last_hidden_state is already through the final layernorm: CLS, registers, patches.
        return model(pixel_values=pixels).last_hidden_state

    return _Backbone(model, tokens, config.patch_size, 1 + getattr(config, "num_register_tokens", 0), config.hidden_size)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path (a Hub id is ``name`` or ``owner/name``)."""
    return name.startswith(("/", ".")) or name.count("/") > 1 or Path(name).exists()

