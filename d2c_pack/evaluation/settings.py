"""The settings of ``d2c-pack sample`` and ``d2c-pack eval``: the sampler's flags, the model sampled, and what is measured."""

from __future__ import annotations

import dataclasses

from d2c_pack.core.errors import UserError
from d2c_pack.core.options import DEVICE_HELP, EVALUATION, MODEL, NUM_HEADS_HELP, OUTPUT, RUN, SAMPLING, flag
from d2c_pack.core.paths import local_folder
from d2c_pack.diffusion.sampling import CFG_CHANNELS, LABEL_MODES, PRECISIONS, SAMPLERS, GuidanceInterval, Sampling

FID_SAMPLES = 50_000  # FID-50K, the protocol DiT, SiT and REPA report

NUM_SAMPLES_HELP = "Samples generated; every command defaults to FID-50K (50,000, as DiT/SiT/REPA report) except the CPU demo (500)."


@dataclasses.dataclass(kw_only=True)
class SamplingArgs:
    """The flags of a :class:`~d2c_pack.diffusion.sampling.Sampling`, shared by ``sample``, ``eval`` and ``demo``."""

    sampler: str = flag(
        "euler",
        help=f"Sampler: {', '.join(SAMPLERS)} (Euler / Heun ODE as REPA's, SiT's Euler–Maruyama SDE, SiT's adaptive dopri5 ODE).",
        panel=SAMPLING,
    )
    sampling_steps: int = flag(
        50,
        help="Sampling steps N (--steps is always training steps). euler, heun: N intervals of an N + 1 point grid (REPA's count; heun makes 2N − 1 network calls). "
        "euler-maruyama: N grid points, i.e. N network calls: N − 1 SDE steps up to t = 0.96, then one mean step (SiT's and REPA's count). "
        "dopri5: ignored, the solver picks its steps (SiT's atol 1e-6, rtol 1e-3).",
        panel=SAMPLING,
    )
    cfg_scale: float = flag(1.0, help="Classifier-free guidance scale (1 = no guidance).", panel=SAMPLING)
    guidance_interval: str | None = flag(None, help="SiT times 'low,high' (0 = noise, 1 = data) where guidance applies (default: 0,1).", panel=SAMPLING)
    guidance_low: float | None = flag(None, help="REPA's convention instead of --guidance-interval: guide where low ≤ t_REPA ≤ high, t_REPA = 1 − t_SiT (1 = noise; default: 0).", panel=SAMPLING)
    guidance_high: float | None = flag(None, help="REPA's convention: the upper end in t_REPA = 1 − t_SiT, e.g. 0.7 = --guidance-interval 0.3,1, compared on REPA's own float64 grid (default: 1).", panel=SAMPLING)
    labels: str = flag(
        "random",
        help=f"Classes of the samples: {' or '.join(LABEL_MODES)} (uniform random as DiT/SiT/REPA's FID-50K; balanced: sample i is of class i mod C).",
        panel=SAMPLING,
    )
    seed: int = flag(0, help="Noise (and random label) seed: sample i has the noise of (seed, i), whatever the batch size.", panel=SAMPLING)
    cfg_channels: str = flag(
        "all",
        help=f"Latent channels guidance applies to: {' or '.join(CFG_CHANNELS)} (all: REPA; 3: the first 3 of 4, as the official DiT/SiT forward_with_cfg and SiT's published samples).",
        panel=SAMPLING,
    )
    precision: str = flag(
        "fp32",
        help=f"Network precision while sampling: {' or '.join(PRECISIONS)} (fp32 with TF32 matmuls on a GPU, as DiT/SiT; bf16: autocast, the time grid stays float64).",
        panel=RUN,
    )
    batch_size: int = flag(256, help="Samples per batch (and images per batch of eval's feature network); under torchrun, per rank.", panel=RUN)
    device: str = flag("auto", help=DEVICE_HELP, panel=RUN)

    def sampling(self) -> Sampling:
        """The settings as one ``Sampling``; the guidance interval in SiT time, or REPA's low/high (one convention, not both)."""
        return Sampling(
            sampler=self.sampler, steps=self.sampling_steps, cfg_scale=self.cfg_scale, guidance_interval=self._interval(),
            seed=self.seed, batch_size=self.batch_size, labels=self.labels, precision=self.precision, cfg_channels=self.cfg_channels,
        )  # fmt: skip

    def _interval(self) -> GuidanceInterval:
        low, high, text = self.guidance_low, self.guidance_high, self.guidance_interval
        if low is not None or high is not None:
            if text is not None:
                raise UserError("give the guidance interval either as --guidance-interval (SiT time) or as --guidance-low/--guidance-high (REPA time), not both")
            return GuidanceInterval(0.0 if low is None else low, 1.0 if high is None else high, time="repa")
        try:
            low, high = (float(part) for part in (text or "0,1").split(","))
        except ValueError:
            raise UserError(f"--guidance-interval takes 'low,high', got {text!r}") from None
        return GuidanceInterval(low, high)


@dataclasses.dataclass(kw_only=True)
class ModelArgs:
    """The model ``sample`` and ``eval`` draw from, given the same way by both."""

    checkpoint: str = flag(help="Model: a training run folder, a d2c-pack model folder, an official SiT or REPA .pt file, or demo:digits.", argument=True)
    vae: str | None = flag(None, help="A local copy of the VAE the model was trained with (checked against the weights hash it recorded); default: the VAE it names.", panel=MODEL)
    num_heads: int | None = flag(None, help=NUM_HEADS_HELP, panel=MODEL)


@dataclasses.dataclass(kw_only=True)
class SampleConfig(SamplingArgs, ModelArgs):
    """Settings of ``d2c-pack sample``: a PNG grid per class, or an ADM-evaluator ``.npz``."""

    out: str = flag("samples.png", help="A .png grid (one row per class), or an .npz of --num-samples samples for the ADM evaluator.", panel=OUTPUT)
    per_class: int = flag(8, help="Grid: samples per class.", panel=OUTPUT)
    classes: str | None = flag(None, help="Grid: comma-separated class indices (default: all classes).", panel=OUTPUT)
    num_samples: int = flag(FID_SAMPLES, help=f".npz: {NUM_SAMPLES_HELP}", panel=OUTPUT)

    def class_list(self) -> list[int] | None:
        if self.classes is None:
            return None
        try:
            return [int(part) for part in self.classes.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--classes takes comma-separated integers, got {self.classes!r}") from None


@dataclasses.dataclass(kw_only=True)
class EvalConfig(SamplingArgs, ModelArgs):
    """Settings of ``d2c-pack eval``: the samples of a model (CHECKPOINT) or of an ADM ``.npz`` (--samples), and what they are compared with."""

    checkpoint: str | None = flag(None, help="Model to sample and score (as sample's CHECKPOINT); or give --samples.", argument=True)
    samples: str | None = flag(None, help="Score an existing ADM sample .npz (arr_0 uint8 N×H×W×3, arr_1 labels) instead of sampling a model.", panel=EVALUATION)
    data: str | None = flag(None, help="The condensed dataset the model was trained on: sets the default reference and features.", panel=EVALUATION)
    reference: str | None = flag(None, help="An ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz), or reference images (any source: demo:digits, hf:NAME, a folder; default: the subset's source).", panel=EVALUATION)
    features: str | None = flag(None, help="'inception' (the ADM evaluator's network: FID, sFID, IS, precision, recall), or a visual encoder (e.g. demo:digits-encoder) whose CLS features FID and precision/recall use (default: see --data).", panel=EVALUATION)
    inception_weights: str | None = flag(None, help="Local file of torch-fidelity's Inception weights (default: the library's download).", panel=EVALUATION)
    num_samples: int = flag(FID_SAMPLES, help=NUM_SAMPLES_HELP, panel=EVALUATION)
    workers: int = flag(4, help="DataLoader processes decoding reference images the first time their features are computed (then cached; 0 = in the main process).", panel=RUN)
    json: str | None = flag(None, help="Also write the results to this JSON file.", panel=OUTPUT)

    def __post_init__(self) -> None:
        if self.data is not None:
            local_folder(self.data)
        if (self.checkpoint is None) == (self.samples is None):
            raise UserError("give the samples to score: a model CHECKPOINT to sample, or --samples FILE.npz")
