"""REPA ``train.py`` checkpoints (sihyun-yu/REPA) read as d2c-pack backbones.

REPA's SiT is the official SiT plus ``projectors`` (one MLP per aligned encoder) on the output of
block ``encoder_depth``; it predicts no σ (output channels = input channels). Its training
checkpoint is ``{"model", "ema", "opt", "args": argparse.Namespace, "steps"}``. Three things
differ from the layout :class:`~d2c_pack.models.d2c.D2CSiT` loads, and are converted here:

- **Keys**: ``projectors.0.{0,2,4}.*`` is :class:`D2CSiT`'s one alignment ``projector.{0,2,4}.*``
  (the same Linear → SiLU → Linear → SiLU → Linear). A checkpoint aligned to several encoders
  has several projectors and is refused.
- **Settings the shapes do not show**: the aligned block (``args.encoder_depth``, REPA's default
  8) and whether there is a null-class row (``args.cfg_prob`` > 0, REPA's default 0.1).
- **Time**: REPA's linear path runs the other way. It trains x_s = (1 − s)·x + s·ε with target
  ε − x, s = 1 at the noise; SiT (and every sampler and the trainer here) uses t = 1 − s with
  target x − ε. So v_SiT(x, t) = −f_REPA(x, 1 − t). The sign is the output layer's, negated
  exactly; the time reversal is folded into the first timestep-MLP layer, since the sinusoid
  features of 1 − t are a fixed linear map of those of t (cos((1−t)ω) = cos ω·cos tω + sin ω·sin tω,
  sin((1−t)ω) = sin ω·cos tω − cos ω·sin tω), computed in float64. Every other tensor is the
  file's, bit for bit. Converted this way a REPA model samples, evaluates and fine-tunes (``--init``)
  like any SiT.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import torch

from d2c_pack.core.errors import UserError

PROJECTORS = "projectors."
PROJECTOR_KEY = re.compile(r"projectors\.(\d+)\.(.+)")
# REPA train.py's defaults, for a checkpoint saved without its args.
REPA_ENCODER_DEPTH = 8
REPA_CFG_PROB = 0.1
TIME_MAX_PERIOD = 10000  # TimestepEmbedder's max_period in REPA's SiT, as in DiT's


@dataclasses.dataclass(frozen=True)
class RepaSettings:
    """What a REPA checkpoint's shapes leave open, from its ``args``."""

    encoder_depth: int
    class_dropout_prob: float


def is_repa_state_dict(state_dict: dict[str, Any]) -> bool:
    """Whether a state dict is a REPA SiT's: it has REPA's ``projectors.N.*`` keys."""
    return any(key.startswith(PROJECTORS) for key in state_dict)


def repa_settings(args: Any, state_dict: dict[str, torch.Tensor]) -> RepaSettings:
    """The aligned block and label dropout of a REPA checkpoint, from its argparse ``args`` (None: REPA's defaults).

    A path REPA can train but this SiT does not sample (``--path-type cosine``) is refused.
    """
    path_type = getattr(args, "path_type", "linear")
    if path_type != "linear":
        raise UserError(f"this REPA checkpoint was trained on the {path_type!r} path (REPA's path_type); d2c-pack samples and trains the linear path only")
    depth = 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key)))
    encoder_depth = int(getattr(args, "encoder_depth", None) or REPA_ENCODER_DEPTH)
    if not 1 <= encoder_depth <= depth:
        raise UserError(f"this REPA checkpoint aligns block {encoder_depth} of a {depth}-block SiT (a file without REPA's 'args' is taken to align block 8, REPA's default)")
    cfg_prob = getattr(args, "cfg_prob", None)
    return RepaSettings(encoder_depth, REPA_CFG_PROB if cfg_prob is None else float(cfg_prob))


def from_repa(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A REPA SiT state dict as :class:`~d2c_pack.models.d2c.D2CSiT` loads it: keys renamed, time in SiT's convention (module docstring)."""
    converted, projectors = {}, set()
    for key, value in state_dict.items():
        if match := PROJECTOR_KEY.fullmatch(key):
            projectors.add(match[1])
            converted[f"projector.{match[2]}"] = value
        else:
            converted[key] = value
    if len(projectors) > 1:
        raise UserError(f"this REPA checkpoint has {len(projectors)} projectors (several aligned encoders); d2c-pack models align one")
    if (last := converted.get("projector.4.weight")) is not None and last.shape[0] == 0:  # --enc-type None: REPA's empty z_dims=[0] projector
        converted = {k: v for k, v in converted.items() if not k.startswith("projector.")}
    converted["t_embedder.mlp.0.weight"] = _reverse_time(converted["t_embedder.mlp.0.weight"])
    converted["final_layer.linear.weight"] = -converted["final_layer.linear.weight"]
    converted["final_layer.linear.bias"] = -converted["final_layer.linear.bias"]
    return converted


def _reverse_time(weight: torch.Tensor) -> torch.Tensor:
    """W' with W'·φ(t) = W·φ(1 − t) for the sinusoid features φ(t) = [cos tω_k | sin tω_k] of the timestep embedder."""
    half = weight.shape[1] // 2
    # The frequencies exactly as the embedder computes them (float32), then the map in float64.
    freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=weight.device) / half).double()
    cos, sin = torch.cos(freqs), torch.sin(freqs)
    w = weight.double()
    w_cos, w_sin = w[:, :half], w[:, half : 2 * half]
    reversed_ = w.clone()  # an odd feature count's zero-padding column is unchanged
    reversed_[:, :half] = w_cos * cos + w_sin * sin
    reversed_[:, half : 2 * half] = w_cos * sin - w_sin * cos
    return reversed_.to(weight.dtype)
