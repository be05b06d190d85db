"""The settings of ``d2c-pack train`` and ``d2c-pack train-encoder``: one dataclass each, whose fields are the
command's flags and recipe keys. Light: no torch import until the settings are checked."""

from __future__ import annotations

import dataclasses

from d2c_pack.attach.settings import encoder_input_size
from d2c_pack.core.errors import UserError
from d2c_pack.core.options import DEVICE_HELP, MODEL, OUTPUT, RUN, SOURCE, TRAINING, check_positive, flag
from d2c_pack.core.paths import local_folder
from d2c_pack.models.sizes import DEFAULT_VAE, MODEL_NAMES, PROJECTOR_DIM
from d2c_pack.sources.settings import SourceArgs


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
            local_folder(self.data)  # a mistyped folder fails before torch is imported or the Hub asked
        if self.vae in ("none", ""):
            self.vae = None
        if self.model not in MODEL_NAMES:
            raise UserError(f"unknown model {self.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        check_positive(self, ("steps", "batch_size", "log_every", "ckpt_every", "ckpt_every_seconds", "resolution"))
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
        check_positive(self, ("resolution", "patch_size", "hidden_size", "num_layers", "num_heads", "steps", "batch_size"))
        if self.hidden_size % self.num_heads:
            raise UserError(f"--hidden-size {self.hidden_size} is not divisible by --num-heads {self.num_heads}")
        size = encoder_input_size(self.resolution)
        if size < self.patch_size or size % self.patch_size:
            raise UserError(f"--resolution {self.resolution} gives a {size}px encoder input, not a multiple of --patch-size {self.patch_size}")
        if not 0 <= self.holdout < 1:
            raise UserError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.shift < 0:
            raise UserError(f"--shift must be 0 or more, got {self.shift}")
