"""The visual column of Attach: DINOv2 patch tokens and CLS token of each ADM crop.

The features are REPA's targets (``preprocess_raw_image`` and ``load_encoders`` of
github.com/sihyun-yu/REPA): each R×R uint8 crop is scaled to [0, 1], ImageNet-normalised, then
resized to S = 224·R/256 (224 at R=256) by ``F.interpolate(mode="bicubic")``, without
antialiasing; the position embeddings are resampled once, when the encoder is loaded, to the
(S/patch)² grid with timm's ``resample_abs_pos_embed`` (antialiased bicubic; the CLS entry kept
as it is). The encoder's last layer, after the final layer norm, gives ``visual_tokens`` (its
patch tokens, (S/patch)² of them: 256 at R=256) and ``visual_cls``.

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

from d2c_pack.attach.settings import encoder_input_size
from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.fingerprint import module_sha256, sha256_json
from d2c_pack.core.progress import quiet_loading_bars
from d2c_pack.core.registry import resolve_model_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRANSFORMERS_TYPES = ("dinov2", "dinov2_with_registers")
_TIMM_PREFIXES = ("timm/", "hf-hub:", "local-dir:")


def dinov2_inputs(crops: torch.Tensor, resolution: int, *, antialias: bool = False) -> torch.Tensor:
    """(B, 3, R, R) uint8 crops → (B, 3, S, S) float32: /255, ImageNet-normalised, bicubic-resized to S.

    The default is REPA's resize (no antialiasing, as ``F.interpolate`` does unless asked);
    ``antialias=True`` is the input the encoder trainer (:mod:`d2c_pack.training.encoder`) uses.
    """
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1:] != (3, resolution, resolution):
        raise ValueError(f"expected uint8 crops of shape (B, 3, {resolution}, {resolution}), got {crops.dtype} {tuple(crops.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 3, 1, 1)
    pixels = (crops.float() / 255 - mean) / std  # (B, 3, R, R)
    size = encoder_input_size(resolution)
    # Antialiasing only matters (and only applies) when shrinking.
    return F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias and size < resolution)


def classifier_inputs(crops: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, R, R) uint8 crops → (B, 3, S, S): a classifier's input as :mod:`d2c_pack.training.encoder` trains it and ``eval`` judges with it.

    Antialiased, unlike the visual attach step's (REPA's) inputs: ``d2c_pack/demo/digits-encoder``
    was trained on these, and the encoder trainer still rebuilds it. It classifies REPA's inputs as
    well (99.9% of the digits either way).
    """
    return dinov2_inputs(crops, resolution, antialias=True)


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
        load = _load_timm if path.startswith(_TIMM_PREFIXES) else _load_transformers
        self._backbone = load(path, self.input_size)
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
        # REPA computes its targets under float16 autocast (its --mixed-precision fp16 default).
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
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
    repository; ``hf-hub:`` and ``local-dir:`` names are timm's own and pass unchanged. timm
    resamples the position embedding while loading the weights for ``img_size``, with the very
    call REPA makes (``resample_abs_pos_embed``, antialiased bicubic), and the forward then uses
    it unchanged since the input's grid is the model's.
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


def _load_transformers(path: str, input_size: int) -> _Backbone:
    """The DINOv2 backbone (with or without registers) of a transformers checkpoint, for ``input_size`` inputs.

    A checkpoint saved with a head (``Dinov2ForImageClassification``) is loaded as saved and its
    backbone kept, so every weight is accounted for.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    if _looks_like_path(path) and not Path(path).is_dir():
        raise UserError(f"visual encoder {path!r}: no such model folder")
    quiet_loading_bars()
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
    _resample_position_embeddings(model.embeddings, input_size // config.patch_size)

    def tokens(pixels: torch.Tensor) -> torch.Tensor:
        # last_hidden_state is already through the final layernorm: CLS, registers, patches.
        return model(pixel_values=pixels).last_hidden_state

    return _Backbone(model, tokens, config.patch_size, 1 + getattr(config, "num_register_tokens", 0), config.hidden_size)


def _resample_position_embeddings(embeddings: torch.nn.Module, grid: int) -> None:
    """Resamples a transformers DINOv2's position embeddings (CLS, then the patch grid) to ``grid``² patches, once.

    This is REPA's ``load_encoders`` step. Left alone, transformers interpolates the grid at every
    forward with settings of its own: Dinov2WithRegisters' are timm's, but Dinov2's bicubic is not
    antialiased, which from 37² to 16² differs from timm's by 3% (relative L2) on a smooth grid and
    by more than the embedding itself on a rough one. Once the grid matches the input,
    transformers adds the embeddings as they are.
    """
    from timm.layers import resample_abs_pos_embed  # a heavy import, only paid where a transformers encoder is used

    resampled = resample_abs_pos_embed(embeddings.position_embeddings.data, [grid, grid], num_prefix_tokens=1)  # (1, 1 + grid², D)
    embeddings.position_embeddings = torch.nn.Parameter(resampled)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path (a Hub id is ``name`` or ``owner/name``)."""
    return name.startswith(("/", ".")) or name.count("/") > 1 or Path(name).exists()

