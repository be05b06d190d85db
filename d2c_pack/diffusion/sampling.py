"""How samples are drawn: the :class:`Sampling` settings every sampling path takes.

``d2c-pack sample``, ``eval`` and ``demo``, :func:`~d2c_pack.evaluation.sample.generate`,
:func:`~d2c_pack.evaluation.evaluator.evaluate` and :func:`~d2c_pack.diffusion.transport.integrate` all
take one ``Sampling`` rather than their own lists of keywords. Light on purpose (no torch): the
command line builds one before it imports a model.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from d2c_pack.core.errors import UserError

SAMPLERS = ("euler", "heun", "euler-maruyama", "dopri5")
LABEL_MODES = ("random", "balanced")
PRECISIONS = ("fp32", "bf16")
# Channels classifier-free guidance applies to: every one (REPA), or the first 3 (the official
# DiT/SiT ``forward_with_cfg``, which its published samples were drawn with).
CFG_CHANNELS = ("all", "3")


@dataclasses.dataclass(frozen=True)
class GuidanceInterval:
    """The closed interval of times where classifier-free guidance applies.

    ``time="sit"``: ``low``/``high`` are SiT times (0 = noise, 1 = data). ``time="repa"``: they are
    REPA's ``guidance_low``/``guidance_high``, in its time t_repa = 1 − t_sit (1 = noise, 0 = data),
    so REPA's ``guidance_high=0.7`` is SiT's interval [0.3, 1]. A REPA interval is compared with
    REPA's own float64 grid rather than mapped to SiT time: 1 − x rounds, and the rounding can
    carry a grid point across an edge (N = 50 with guidance_high 0.7 would start guidance a step late).
    """

    low: float = 0.0
    high: float = 1.0
    time: Literal["sit", "repa"] = "sit"

    def contains(self, t: float) -> bool:
        """Whether SiT time ``t`` is inside."""
        return self.low <= (1.0 - t if self.time == "repa" else t) <= self.high


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
    """The settings of drawing samples from a model; checked when made (errors name the CLI flags).

    Attributes:
        sampler: One of ``SAMPLERS``.
        steps: Sampling steps N (``--sampling-steps``): euler/heun take N intervals, euler-maruyama
            N grid points (N network calls), dopri5 ignores it.
        cfg_scale: Classifier-free guidance scale (1 = none).
        guidance_interval: Where guidance applies.
        seed: Sample i's noise comes from (seed, i); random labels from a stream of their own.
        batch_size: Samples per batch (the result does not depend on it, except with dopri5).
        labels: How the classes of a set of samples are drawn (one of ``LABEL_MODES``).
        precision: ``fp32`` (TF32 matmuls on a GPU, as DiT/SiT sample) or ``bf16`` (the network
            under bfloat16 autocast); the state and the float64 time grid stay as they are.
        cfg_channels: ``all`` (REPA) or ``3``: guidance on the first 3 latent channels only, the
            others conditional, as the official DiT/SiT ``forward_with_cfg``.
    """

    sampler: str = "euler"
    steps: int = 50
    cfg_scale: float = 1.0
    guidance_interval: GuidanceInterval = GuidanceInterval()
    seed: int = 0
    batch_size: int = 256
    labels: str = "random"
    precision: str = "fp32"
    cfg_channels: str = "all"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        least = 2 if self.sampler == "euler-maruyama" else 1
        if self.steps < least:
            raise UserError(f"--sampling-steps must be at least {least} for {self.sampler}, got {self.steps}")
        if self.cfg_scale < 1:
            raise UserError(f"--cfg-scale must be at least 1 (1 = no guidance), got {self.cfg_scale}")
        interval = self.guidance_interval
        if not 0 <= interval.low <= interval.high <= 1:
            noise_end = 1 if interval.time == "repa" else 0
            raise UserError(
                f"the guidance interval must satisfy 0 ≤ low ≤ high ≤ 1 ({interval.time.upper()} time, {noise_end} = noise), got {interval.low}, {interval.high}"
            )
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")
        if self.labels not in LABEL_MODES:
            raise UserError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {self.labels!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.cfg_channels not in CFG_CHANNELS:
            raise UserError(f"--cfg-channels must be one of {', '.join(CFG_CHANNELS)}, got {self.cfg_channels!r}")

    @property
    def guided_channels(self) -> int | None:
        """How many leading channels guidance applies to (None: all)."""
        return None if self.cfg_channels == "all" else int(self.cfg_channels)

    def record(self) -> dict:
        """The settings as JSON-ready keys, for results files."""
        interval = self.guidance_interval
        return {
            "sampler": self.sampler, "sampling_steps": self.steps, "cfg_scale": self.cfg_scale,
            "guidance_interval": [interval.low, interval.high], "guidance_time": interval.time, "seed": self.seed,
            "batch_size": self.batch_size, "labels": self.labels,
            "sampling_precision": self.precision, "cfg_channels": self.cfg_channels,  # not "precision": eval's metric
        }  # fmt: skip
