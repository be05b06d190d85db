"""Image preprocessing: any PIL image to 8-bit RGB, the ADM centre crop, and tensor conversion (also of a whole source).

The crop is the one DiT, SiT, REPA and edm2 train on (``center_crop_arr`` in DiT's
``train.py``), reproduced pixel for pixel so that scores and latents computed here match
what those models saw during training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from d2c_pack.core.errors import UserError

if TYPE_CHECKING:
    from d2c_pack.sources.image_source import ImageSource

_UINT16_MAX = 65535
_INT32_MAX = 2**31 - 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` upright (EXIF orientation applied) as a new 8-bit RGB image.

    - Integer modes wider than 8 bits (``I;16*``, ``I``) are scaled, not clipped: a 16-bit
      value ``v`` becomes ``round(v / 257)``. Mode ``I`` is read as 16-bit data when all its
      values fit in 0..65535 (16-bit PNG/TIFF/PGM decode to it), otherwise as signed 32-bit
      data with 2**31 - 1 mapped to 255; negative values become 0.
    - Float mode ``F`` is read as 0..1 when all values lie in that range, otherwise on PIL's
      0..255 scale; values are clipped and NaN becomes 0.
    - Images with transparency (RGBA, LA, PA, or a ``transparency`` entry on P/L/RGB) are
      alpha-composited over white. ADM simply drops the alpha channel, which leaves fully
      transparent regions with whatever colour the encoder stored there (often black or
      garbage); white matches how such images are usually displayed.
    - Everything else (L, 1, P, CMYK, YCbCr, ...) uses PIL's own conversion.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_scale_to_uint8(image)).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(image: Image.Image) -> np.ndarray:
    """Map a single-channel ``I*``/``F`` image to a 2-D uint8 array (see ``to_rgb``)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0)
        full_scale = 1.0 if values.size and values.min() >= 0 and values.max() <= 1 else 255.0
    elif image.mode.startswith("I;16") or values.size == 0 or values.max() <= _UINT16_MAX:
        full_scale = _UINT16_MAX
    else:
        full_scale = _INT32_MAX
    return np.rint(np.clip(values * (255.0 / full_scale), 0, 255)).astype(np.uint8)


def center_crop_adm(image: Image.Image, resolution: int) -> Image.Image:
    """ADM centre crop to ``resolution``×``resolution`` RGB, exactly as DiT's ``center_crop_arr``.

    After ``to_rgb``: halve with BOX while the short side is at least ``2 * resolution``,
    resize with BICUBIC so the short side is ``resolution`` (smaller images are upscaled by
    the same step), then crop the centre square, rounding the offsets down.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = to_rgb(image)
    while min(*image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    width, height = image.size
    top = (height - resolution) // 2
    left = (width - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image → float32 tensor (3, H, W) in [-1, 1]; other modes go through ``to_rgb``."""
    if image.mode != "RGB":
        image = to_rgb(image)
    pixels = torch.from_numpy(np.array(image))  # a writable copy: torch warns on PIL's read-only buffer
    return to_unit_range(pixels.permute(2, 0, 1)).contiguous()


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) → float32 in [-1, 1], the models' input range: one formula wherever crops become inputs."""
    return pixels.float() / 127.5 - 1


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Inverse of ``image_to_tensor``: (3, H, W) in [-1, 1] → RGB image (clamped, rounded)."""
    pixels = ((tensor.detach().float().cpu() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


class SourceCrops(Dataset):
    """(uint8 ADM crop (3, R, R), label) for the source images at ``indices``; None for a corrupt one."""

    def __init__(self, source: ImageSource, resolution: int, indices: list[int]):
        if not source.random_access:
            raise UserError(f"training needs random access to {source.spec}: use a non-streaming source")
        self.source = source
        self.resolution = resolution
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int] | None:
        record = self.source.get(self.indices[position])
        if record is None:
            return None
        crop = np.array(center_crop_adm(record.image, self.resolution))  # (R, R, 3) uint8
        return torch.from_numpy(crop).permute(2, 0, 1), record.label
