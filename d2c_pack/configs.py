"""The settings of every command: one dataclass each, whose fields are at once the command's options
(declared with :func:`~d2c_pack.options.flag`, with their help and ``--help`` panel), its recipe keys
and the arguments of the library function it calls.

Light on purpose: the standard library and small d2c_pack modules only (no torch, datasets or
transformers), so that the command line lists its options without importing what the commands run.
A check that needs a heavy name imports it inside ``__post_init__``, when the settings are made.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from d2c_pack.errors import UserError
from d2c_pack.options import ATTACH, CARD, EVALUATION, MODEL, OUTPUT, RUN, SAMPLING, SCORING, SELECTION, SOURCE, TRAINING, flag
from d2c_pack.paths import local_folder
from d2c_pack.select.selectors import SELECTORS
from d2c_pack.train.sampling import CFG_CHANNELS, LABEL_MODES, PRECISIONS, SAMPLERS, GuidanceInterval, Sampling

if TYPE_CHECKING:
    from d2c_pack.hub_retry import RetryPolicy
    from d2c_pack.sources import ImageSource

DEFAULT_PROMPT_TEMPLATE = "a photo of a {name}"
DEFAULT_VISUAL_ENCODER = "facebook/dinov2-base"
PROJECTOR_DIM = 2048  # REPA's projector width
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"  # the latent space of the official SiT and DiT checkpoints
COMMIT_BYTES = 5 * 1024**3  # a push commit records at most this much: what a re-run may have to upload again if the Hub lost uncommitted objects
FID_SAMPLES = 50_000  # FID-50K, the protocol DiT, SiT and REPA report
DEVICE_HELP = "'auto' (this rank's GPU if any, else the CPU), 'cpu', 'cuda', 'cuda:1', …"
NUM_SAMPLES_HELP = "Samples generated; every command defaults to FID-50K (50,000, as DiT/SiT/REPA report) except the CPU demo (500)."
VAE_PRECISIONS = ("fp32", "bf16")  # --vae-precision: what the scorer's VAE runs in
NUM_HEADS_HELP = (
    "Attention heads of an official or REPA .pt whose width and depth are no DiT/SiT size (default: the size's; "
    "such a file is refused without it, never guessed)."
)
DATASET_HELP = "A dataset folder, or a Hub dataset ORG/NAME[@REVISION] (e.g. ORG/NAME@v1.0: a tag, branch or commit)."


def default_work_dir() -> str:
    """``$D2C_PACK_CACHE``, else ``$XDG_CACHE_HOME/d2c-pack``, else ``~/.cache/d2c-pack``."""
    if "D2C_PACK_CACHE" in os.environ:
        return os.environ["D2C_PACK_CACHE"]
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2c-pack")


def _positive(config: object, names: tuple[str, ...]) -> None:
    """Refuses a named setting that is set and not positive, naming its flag."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclasses.dataclass(kw_only=True)
class SourceArgs:
    """Which source to read and how: the ``--source``, ``--split``, ``--*-column`` … flags of every command."""

    source: str = flag(help="Image source: demo:digits, hf:NAME (Hub dataset), an ImageFolder tree, a .parquet file or folder, or a save_to_disk folder.", panel=SOURCE)
    split: str = flag("train", help="Split of a Hub / datasets source (split expressions such as 'train[:10%]' work).", panel=SOURCE)
    image_column: str = flag("image", help="Image column of a datasets source.", panel=SOURCE)
    label_column: str = flag("label", help="Label column (ClassLabel or integer class index) of a datasets source.", panel=SOURCE)
    id_column: str | None = flag(None, help="Column holding a stable image id (default: the stored file name, else split/index).", panel=SOURCE)
    revision: str | None = flag(None, help="Revision (branch, tag or commit) of a Hub source to read.", panel=SOURCE)

    def open_source(self, *, streaming: bool = False) -> ImageSource:
        from d2c_pack.sources import open_source

        return open_source(
            self.source, split=self.split, image_column=self.image_column, label_column=self.label_column,
            id_column=self.id_column, revision=self.revision, streaming=streaming,
        )  # fmt: skip


@dataclasses.dataclass(kw_only=True)
class ScoreConfig(SourceArgs):
    """Settings of a scoring pass; the flags and recipe keys of ``d2c-pack score``."""

    scorer: str = flag(
        "DiT-XL-2-256x256.pt",
        help="Frozen class-conditional backbone: an official DiT/SiT .pt file, a d2c-pack model folder, or demo:digits.",
        panel=SCORING,
    )
    prediction: str | None = flag(None, help="What the scorer predicts, 'epsilon' (DiT) or 'velocity' (SiT); default: from its file name or config.", panel=SCORING)
    num_heads: int | None = flag(None, help=NUM_HEADS_HELP, panel=SCORING)
    vae: str | None = flag(None, help="diffusers AutoencoderKL of a latent-space scorer: a local folder or a Hub id, optionally ID@REVISION (default: the scorer's own, stabilityai/sd-vae-ft-ema for the official DiT/SiT).", panel=SCORING)
    vae_precision: str = flag(
        "fp32", help="Weights and activations of a latent-space scorer's VAE: fp32 (the official code's scores) or bf16 (faster; see docs/scoring.md for its effect).", panel=SCORING
    )
    timesteps: int = flag(8, help="Number |T| of stratified timesteps the loss is averaged over.", panel=SCORING)
    seed: int = flag(0, help="Seed of the per-(image, timestep) noise.", panel=SCORING)
    resolution: int = flag(256, help="Resolution R of the ADM centre crop; must match the scorer.", panel=SCORING)
    batch_size: int = flag(32, help="Images per forward pass (each goes through with all |T| noisy copies).", panel=RUN)
    chunk_size: int = flag(4096, help="Images per cache chunk: the unit of resumption and of work per rank.", panel=RUN)
    workers: int = flag(4, help="DataLoader processes decoding and cropping images (0 = in the main process).", panel=RUN)
    streaming: bool = flag(False, help="Stream a Hub source instead of downloading it first (read front to back, no workers).", panel=SOURCE)
    device: str = flag("auto", help=DEVICE_HELP, panel=RUN)
    work: str = flag(help="Cache folder for scores (default $D2C_PACK_CACHE or ~/.cache/d2c-pack).", factory=default_work_dir, panel=RUN)

    def __post_init__(self) -> None:
        _positive(self, ("timesteps", "resolution", "batch_size", "chunk_size", "num_heads"))
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.vae in ("none", ""):
            self.vae = None
        if self.prediction not in (None, "epsilon", "velocity"):
            raise UserError(f"--prediction must be 'epsilon' or 'velocity', got {self.prediction!r}")
        if self.vae_precision not in VAE_PRECISIONS:
            raise UserError(f"--vae-precision must be {' or '.join(VAE_PRECISIONS)}, got {self.vae_precision!r}")


@dataclasses.dataclass(kw_only=True)
class AttachArgs:
    """The Attach flags of ``d2c-pack build``; ``none`` for a model leaves its columns out."""

    text_encoder: str | None = flag("google/flan-t5-xl", help="transformers text encoder (T5, CLIP text, BERT-like, demo:minilm), or 'none' for no caption/text columns.", panel=ATTACH)
    prompt_template: str = flag(DEFAULT_PROMPT_TEMPLATE, help="Caption of every image of a class; {name} is the first synonym of the class name.", panel=ATTACH)
    captioner: str | None = flag(None, help="transformers image-to-text model captioning each image instead of the class prompt.", panel=ATTACH)
    visual_encoder: str | None = flag(DEFAULT_VISUAL_ENCODER, help="DINOv2 (transformers name or path, timm/NAME, demo:digits-encoder), or 'none' for no visual columns.", panel=ATTACH)
    vae: str | None = flag(
        "stabilityai/sd-vae-ft-ema",
        help="diffusers AutoencoderKL (a local folder or a Hub id, optionally ID@REVISION) of the latent column and of a latent-space scorer; 'none': no latent column (the scorer then uses its own).",
        panel=ATTACH,
    )
    attach_batch_size: int = flag(32, help="Images per batch while attaching.", panel=RUN)

    def __post_init__(self) -> None:
        for name in ("text_encoder", "captioner", "visual_encoder", "vae"):
            if getattr(self, name) in ("none", ""):
                setattr(self, name, None)
        if self.captioner and not self.text_encoder:
            raise UserError("--captioner needs a --text-encoder to embed its captions")


@dataclasses.dataclass(kw_only=True)
class BuildConfig(AttachArgs, ScoreConfig):
    """Settings of ``d2c-pack build`` (its flags and recipe keys): source, scorer, attach, selection, output."""

    out: str = flag(help="Output folder, laid out like a Hub dataset repository.", panel=OUTPUT)
    budget: str = flag("0.8%", help="How many images to keep: '0.8%' of each class's share, a total '10k' / '10000', or '10/class'.", panel=SELECTION)
    selector: str = flag("interval", help=f"Selection rule: {', '.join(SELECTORS)} (interval = D2C).", panel=SELECTION)
    interval: str = flag("auto", help="Stride k of interval sampling, or 'auto' = round(0.75 · mean class size / per-class budget).", panel=SELECTION)
    with_scores: bool = flag(True, help="Also publish every source image's score as the 'scores' config.", panel=OUTPUT)
    explore: bool = flag(False, help="Also write assets/explore.html (linked from the card): every class's difficulty ranking with kept and rejected images, as `d2c-pack explore` writes it.", panel=OUTPUT)
    max_shard_size: str = flag("500MB", help="Largest parquet shard (uncompressed Arrow size).", panel=OUTPUT)
    repo_id: str | None = flag(None, help="Hub repository the subset will be pushed to, for the card's usage snippets (ORG/NAME).", panel=OUTPUT)
    license: str | None = flag(
        None,
        help="The card's licence, a Hub licence id (e.g. cc-by-4.0, mit, other) or 'imagenet' for ImageNet's terms (private and gated on push); "
        "default: 'imagenet' for ImageNet-derived data, else 'unknown'. `d2c-pack card` changes it later.",
        panel=CARD,
    )
    description: str | None = flag(None, help="Markdown paragraph(s) the card shows under its title.", panel=CARD)
    pretty_name: str | None = flag(None, help="The card's title (default: SOURCE condensed by D2C (BUDGET, SELECTOR)).", panel=CARD)
    overwrite: bool = flag(False, help="Replace an existing dataset folder built with other settings.", panel=OUTPUT)

    def __post_init__(self) -> None:
        ScoreConfig.__post_init__(self)
        AttachArgs.__post_init__(self)
        if self.selector not in SELECTORS:
            raise UserError(f"unknown selector {self.selector!r}; choose one of: {', '.join(SELECTORS)}")
        if self.interval != "auto" and not (str(self.interval).isdigit() and int(self.interval) >= 1):
            raise UserError(f"--interval must be 'auto' or a positive integer, got {self.interval!r}")


@dataclasses.dataclass(kw_only=True)
class TrainConfig(SourceArgs):
    """Settings of one training run; the CLI flags and recipe keys of ``d2c-pack train`` are these fields."""

    source: str | None = flag(None, help="Train on the images of a source (demo:digits, hf:NAME, a folder, ...) instead of --data.", panel=SOURCE)
    data: str | None = flag(None, help="Condensed dataset to train on: a folder built by `d2c-pack build`, or a Hub ORG/NAME[@REVISION].", panel=SOURCE)
    out: str = flag(help="Run folder; re-running with the same folder resumes from its newest checkpoint.", panel=OUTPUT)
    model: str = flag("SiT-XL/2", help="Backbone, e.g. SiT-XL/2, SiT-B/4, SiT-T/4 (tiny, for demos).", panel=MODEL)
    resolution: int | None = flag(
        None, help="Image resolution R of the ADM centre crop; with --data the subset's (from its manifest, or its latent column and --vae; a different value is refused), else 256.", panel=MODEL
    )
    vae: str | None = flag(
        "auto",
        help=f"diffusers AutoencoderKL: 'auto' is a latent column's (from the manifest) or, for images, {DEFAULT_VAE}; 'none' for pixel space. "
        "A latent column without a d2c-pack manifest needs the VAE that made it named.",
        panel=MODEL,
    )
    text: bool = flag(True, help="Condition on text_embedding/text_mask through the DC-Embedding (--data with text columns).", panel=MODEL)
    align: bool = flag(True, help="Add the visual-alignment loss against visual_tokens (--data with visual columns).", panel=MODEL)
    class_cond: bool = flag(True, help="Condition on the class label.", panel=MODEL)
    encoder_depth: int | None = flag(None, help="Block whose output is aligned (default 8; ⌈depth/3⌉ for models under 24 blocks).", panel=MODEL)
    proj_coeff: float = flag(0.5, help="Weight λ of the alignment loss.", panel=TRAINING)
    projector_dim: int = flag(PROJECTOR_DIM, help="Hidden width of the alignment projector (REPA's 2048; smaller for tiny CPU models).", panel=MODEL)
    init: str | None = flag(None, help="Initial weights: an official SiT/DiT .pt, or a d2c-pack model or run folder; new layers start as specified.", panel=MODEL)
    learn_sigma: bool = flag(True, help="Keep the official 2C-channel output layout (extra channels unused).", panel=MODEL)
    class_dropout: float = flag(0.1, help="Probability of dropping the label and the text together (the null condition CFG samples with), as SiT/REPA.", panel=TRAINING)
    text_dropout: float = flag(0.0, help="Extra probability of dropping the text alone, independently of --class-dropout (0 = SiT/REPA).", panel=TRAINING)
    steps: int = flag(400_000, help="Training steps: total optimisation steps.", panel=TRAINING)
    batch_size: int = flag(256, help="Global batch size (over all processes).", panel=TRAINING)
    lr: float = flag(1e-4, help="AdamW learning rate (constant).", panel=TRAINING)
    weight_decay: float = flag(0.0, help="AdamW weight decay.", panel=TRAINING)
    grad_clip: float = flag(1.0, help="Gradient-norm clipping threshold.", panel=TRAINING)
    ema_decay: float = flag(0.9999, help="EMA decay of the exported weights, from step 0 as SiT/REPA (the EMA starts as a copy of the model).", panel=TRAINING)
    ema_warmup: bool = flag(False, help="Warm the decay up as diffusers' EMAModel, min(decay, (1 + step) / (10 + step)): for runs of a few hundred steps.", panel=TRAINING)
    seed: int = flag(0, help="Seed of initialisation, batch order, noise and dropout.", panel=TRAINING)
    data_memory_gb: float | None = flag(
        None,
        help="GiB of decoded training columns a process may hold in memory (on the GPU when they fit a quarter of its free memory, "
        "else in RAM); a larger subset is read in place. Default: half the available RAM over the node's processes; 0 reads in place.",
        panel=TRAINING,
    )
    workers: int = flag(4, help="DataLoader worker processes per rank (0 = load in the main process).", panel=RUN)
    log_every: int = flag(100, help="Steps between metrics.jsonl lines, each the mean over its steps.", panel=OUTPUT)
    ckpt_every: int = flag(10_000, help="Steps between checkpoints.", panel=OUTPUT)
    ckpt_every_seconds: float | None = flag(
        None,
        help="Also checkpoint at the first log step once this many seconds of training have passed since the last checkpoint (only the newest such one is kept).",
        panel=OUTPUT,
    )
    device: str = flag("auto", help=DEVICE_HELP, panel=RUN)
    compile: bool = flag(False, help="torch.compile the backbone.", panel=RUN)

    def __post_init__(self) -> None:
        if self.data is not None:
            local_folder(self.data)  # a mistyped folder fails before torch is imported (below) or the Hub asked
        from d2c_pack.models import BACKBONES

        if self.vae in ("none", ""):
            self.vae = None
        if self.model not in BACKBONES:
            raise UserError(f"unknown model {self.model!r}; choose one of: {', '.join(BACKBONES)}")
        _positive(self, ("steps", "batch_size", "log_every", "ckpt_every", "ckpt_every_seconds", "resolution"))
        if self.data_memory_gb is not None and self.data_memory_gb < 0:
            raise UserError(f"--data-memory-gb must be 0 or more, got {self.data_memory_gb}")
        if (self.source is None) == (self.data is None):
            raise UserError("give exactly one of --data (a condensed dataset) and --source (images)")
        if self.source is not None and (self.text or self.align):
            raise UserError("--text and --align need the columns of a condensed dataset: use --data, or pass --no-text --no-align")

    @property
    def image_vae(self) -> str | None:
        """The VAE that turns images into the model's inputs: ``--vae``, the default for ``auto``; None for pixel space."""
        return DEFAULT_VAE if self.vae == "auto" else self.vae


@dataclasses.dataclass(kw_only=True)
class EncoderTrainConfig(SourceArgs):
    """Settings of ``d2c-pack train-encoder``; the CLI flags and recipe keys are these fields."""

    out: str = flag(help="Run folder: the classifier goes to OUT/model, its accuracies to OUT/metrics.json.", panel=OUTPUT)
    resolution: int = flag(32, help="Side R of the ADM centre crop; the encoder sees 224·R/256 pixels, like the visual attach step.", panel=MODEL)
    patch_size: int = flag(4, help="ViT patch size; must divide 224·R/256.", panel=MODEL)
    hidden_size: int = flag(64, help="Token width (MLP width is 4×).", panel=MODEL)
    num_layers: int = flag(4, help="Number of transformer blocks.", panel=MODEL)
    num_heads: int = flag(4, help="Attention heads per block; must divide --hidden-size.", panel=MODEL)
    steps: int = flag(1500, help="Training steps: optimisation steps.", panel=TRAINING)
    batch_size: int = flag(64, help="Images per step.", panel=TRAINING)
    lr: float = flag(3e-3, help="Peak AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay to 0).", panel=TRAINING)
    weight_decay: float = flag(0.05, help="AdamW weight decay.", panel=TRAINING)
    shift: int = flag(2, help="Largest random translation, in encoder-input pixels, applied to training images (0 = no augmentation).", panel=TRAINING)
    holdout: float = flag(0.1, help="Share of the source held out (never trained on) to measure accuracy; 0 trains on everything.", panel=TRAINING)
    seed: int = flag(0, help="Seed of initialisation, batch order and augmentation.", panel=TRAINING)
    workers: int = flag(0, help="DataLoader worker processes (0 = load in the main process).", panel=RUN)
    device: str = flag("auto", help=DEVICE_HELP, panel=RUN)

    def __post_init__(self) -> None:
        from d2c_pack.attach.visual import encoder_input_size

        _positive(self, ("resolution", "patch_size", "hidden_size", "num_layers", "num_heads", "steps", "batch_size"))
        if self.hidden_size % self.num_heads:
            raise UserError(f"--hidden-size {self.hidden_size} is not divisible by --num-heads {self.num_heads}")
        size = encoder_input_size(self.resolution)
        if size < self.patch_size or size % self.patch_size:
            raise UserError(f"--resolution {self.resolution} gives a {size}px encoder input, not a multiple of --patch-size {self.patch_size}")
        if not 0 <= self.holdout < 1:
            raise UserError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.shift < 0:
            raise UserError(f"--shift must be 0 or more, got {self.shift}")


@dataclasses.dataclass(kw_only=True)
class SamplingArgs:
    """The flags of a :class:`~d2c_pack.train.sampling.Sampling`, shared by ``sample``, ``eval`` and ``demo``."""

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


@dataclasses.dataclass(kw_only=True)
class DemoConfig(SamplingArgs):
    """Settings of ``d2c-pack demo`` (the build and training settings are the shipped ``demo`` recipe's)."""

    out: str = flag("demo-out", help="Folder for every output (data, run, samples, metrics).", panel=OUTPUT)
    push_to: str | None = flag(None, help="Also push the subset to this Hub dataset repository (needs HF_TOKEN; HF_ENDPOINT for another server).", panel=OUTPUT)
    steps: int = flag(600, help="Training steps of the demo SiT (the recipe demo's train: section gives the rest).", panel=TRAINING)
    num_samples: int = flag(500, help=NUM_SAMPLES_HELP, panel=EVALUATION)
    sampling_steps: int = flag(25, help="Sampling steps (Euler intervals) per sample.", panel=SAMPLING)
    cfg_scale: float = flag(1.5, help="Classifier-free guidance scale of the samples.", panel=SAMPLING)


@dataclasses.dataclass(kw_only=True)
class PushConfig:
    """Settings of ``d2c-pack push``; None for ``private``/``gated`` means: decided by the data's licence."""

    repo_id: str = flag(help="Hub dataset repository ORG/NAME.", argument=True)
    source_dir: str = flag(".", help="The built dataset folder to publish.", names=("--from",))
    tag: str | None = flag(None, help="Version tag for the pushed commit, e.g. v1.0.")
    private: bool | None = flag(None, help="Visibility (default: private for ImageNet-derived data, else public).", names=("--private/--public",))
    gated: bool | None = flag(None, help="Gate access behind the card's terms (default: gated for ImageNet-derived data).", names=("--gated/--not-gated",))
    create_pr: bool = flag(False, help="Open a pull request (all files in one commit) instead of committing to the branch (in commits of at most 5 GiB).")
    branch: str | None = flag(None, help="Branch of the Hub repository to commit to (default: main); sources' --revision is what they read.")
    message: str | None = flag(None, help="Commit message.")
    force: bool = flag(False, help="Move the tag if it already exists.")
    commit_bytes: int = COMMIT_BYTES
    retry: RetryPolicy | None = None  # None: hub_retry.DEFAULT_POLICY


@dataclasses.dataclass(kw_only=True)
class DatasetArg:
    """The dataset ``verify``, ``inspect`` and ``explore`` read."""

    name: str = flag(help=DATASET_HELP, argument=True)

    def __post_init__(self) -> None:
        local_folder(self.name)  # a mistyped folder fails now, before the command imports anything heavy or asks the Hub


@dataclasses.dataclass(kw_only=True)
class VerifyConfig(DatasetArg):
    """Settings of ``d2c-pack verify``."""


@dataclasses.dataclass(kw_only=True)
class InspectConfig(DatasetArg):
    """Settings of ``d2c-pack inspect``."""


@dataclasses.dataclass(kw_only=True)
class CardConfig:
    """Settings of ``d2c-pack card``: the card settings to change (None: unchanged, '': back to automatic)."""

    folder: str = flag(help="A dataset folder built by `d2c-pack build`.", argument=True)
    license: str | None = flag(None, help="New licence: a Hub licence id (cc-by-4.0, mit, other, …) or 'imagenet'; '' = automatic.", panel=CARD)
    description: str | None = flag(None, help="New Markdown description under the card's title; '' = none.", panel=CARD)
    pretty_name: str | None = flag(None, help="New title of the card; '' = automatic.", panel=CARD)


EXPORT_FORMATS = {
    "repa": "REPA's preprocessed layout (images/ + vae-sd/ with dataset.json) for its train.py --data-dir; needs the latent column",
    "imagefolder": "OUT/train/<class>/<id>.png for torchvision's ImageFolder (DiT, SiT, fast-DiT train.py --data-path)",
}


@dataclasses.dataclass(kw_only=True)
class ExportConfig(DatasetArg):
    """Settings of ``d2c-pack export``: a condensed dataset written in a layout another trainer reads."""

    format: str = flag(help="; ".join(f"'{name}': {what}" for name, what in EXPORT_FORMATS.items()) + ".", panel=OUTPUT)
    out: str = flag(help="Folder to write (re-running the same export into it resumes it).", panel=OUTPUT)
    overwrite: bool = flag(False, help="Replace a non-empty --out that holds anything but this same export.", panel=OUTPUT)

    def __post_init__(self) -> None:
        DatasetArg.__post_init__(self)
        if self.format not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")


# What an explore page holds (explore.py draws it; stated here for explore's --help).
THUMBNAIL_SIZE = 64  # px, centre-cropped square (the crop the scorer and the trainer see)
SELECTED_THUMBNAILS = 12  # per class, evenly spread along the ranking of the selected images
REJECTED_GROUPS = ("easiest", "median", "hardest")  # one rejected image each, per class
PAGE_CONTENTS = (
    f"The page holds at most {SELECTED_THUMBNAILS} selected and {len(REJECTED_GROUPS)} rejected {THUMBNAIL_SIZE}px WebP thumbnails per class "
    "and every selected image's id, rank and score."
)


@dataclasses.dataclass(kw_only=True)
class ExploreConfig(DatasetArg):
    """Settings of ``d2c-pack explore``."""

    out: str = flag("explore.html", help="The page to write.")
    source: str | None = flag(None, help="The source the subset was built from (as build's --source), for thumbnails of rejected images; without it they are shown by score only.")
