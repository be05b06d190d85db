"""The settings of the commands that run several stages: ``d2c-pack build`` (scoring, selection, attach and
packaging flags in one dataclass) and ``d2c-pack demo``."""

from __future__ import annotations

import dataclasses

from d2c_pack.attach.settings import AttachArgs
from d2c_pack.core.errors import UserError
from d2c_pack.core.options import CARD, EVALUATION, OUTPUT, SAMPLING, SELECTION, TRAINING, flag
from d2c_pack.evaluation.settings import NUM_SAMPLES_HELP, SamplingArgs
from d2c_pack.selection.selectors import SELECTORS
from d2c_pack.selection.settings import ScoreConfig


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
class DemoConfig(SamplingArgs):
    """Settings of ``d2c-pack demo`` (the build and training settings are the shipped ``demo`` recipe's)."""

    out: str = flag("demo-out", help="Folder for every output (data, run, samples, metrics).", panel=OUTPUT)
    push_to: str | None = flag(None, help="Also push the subset to this Hub dataset repository (needs HF_TOKEN; HF_ENDPOINT for another server).", panel=OUTPUT)
    steps: int = flag(600, help="Training steps of the demo SiT (the recipe demo's train: section gives the rest).", panel=TRAINING)
    num_samples: int = flag(500, help=NUM_SAMPLES_HELP, panel=EVALUATION)
    sampling_steps: int = flag(25, help="Sampling steps (Euler intervals) per sample.", panel=SAMPLING)
    cfg_scale: float = flag(1.5, help="Classifier-free guidance scale of the samples.", panel=SAMPLING)
