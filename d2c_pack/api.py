"""The Python API: the functions a script calls, with keyword arguments instead of the CLI's settings objects.

Each function takes the options of the command of the same name as keyword arguments, by
their Python names (``budget="10/class"``, ``text_encoder="none"``, ``batch_size=64``), and
optionally a ``recipe`` (a shipped recipe's name or a YAML path) whose keys fill the options
not given. ``import d2c_pack`` loads none of this: the package attributes load it on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d2c_pack.recipe import read_recipe

if TYPE_CHECKING:
    import numpy as np

    from d2c_pack.hub import PushResult
    from d2c_pack.models import BackboneConfig, DiT
    from d2c_pack.select.selectors import Budget, Features
    from d2c_pack.train.memory import SubsetArrays


def _settings(recipe: str | None, command: str | None, given: dict[str, Any], options: dict[str, Any], fields: set[str] | None = None) -> dict[str, Any]:
    """The recipe's keys for ``command`` (those in ``fields``, when given), overridden by the named arguments given and by ``options``."""
    base = {key: value for key, value in (read_recipe(recipe, command) if recipe else {}).items() if fields is None or key in fields}
    return base | {name: value for name, value in given.items() if value is not None} | options


def score_source(source: str | None = None, *, scorer: str | None = None, recipe: str | None = None, **options: Any) -> Path:
    """Scores every image of a source with a diffusion model, resuming from the score cache (``d2c-pack score``).

    Args:
        source: the labelled images: ``demo:digits``, ``hf:ORG/NAME``, a class-per-folder tree,
            a parquet file or a ``save_to_disk`` folder (else the recipe's ``source``).
        scorer: the class-conditional diffusion model: an official DiT/SiT ``.pt``, a
            d2c-pack model folder or ``demo:digits`` (else the recipe's, else the default).
        recipe: a shipped recipe name (``"demo"``) or a YAML path; a build recipe's
            selection keys are ignored.
        **options: any other ``d2c-pack score`` option (``resolution=32``, ``timesteps=8``,
            ``device="cpu"``, ``work="cache/"``, ...).

    Returns:
        The merged score table (``scores.parquet``, one row per image) in the cache.

    Raises:
        UserError: a source, scorer or option that cannot be used.
    """
    from d2c_pack.score import ScoreConfig
    from d2c_pack.score import score_source as run

    # A build recipe's selection and attach keys are not scoring's: they are left out, as `d2c-pack score` does.
    return run(ScoreConfig(**_settings(recipe, None, {"source": source, "scorer": scorer}, options, set(ScoreConfig.__dataclass_fields__))))


def select(
    name: str,
    *,
    scores: np.ndarray | None,
    labels: np.ndarray,
    per_class: Budget,
    ids: list[str] | None = None,
    k: int | None = None,
    seed: int = 0,
    features: Features | None = None,
) -> np.ndarray:
    """Selects a subset per class with one of the selectors ``build`` offers.

    Args:
        name: ``interval`` (D2C), ``min``, ``max``, ``medium``, ``random``, ``kcenter`` or ``herding``.
        scores: (N,) difficulty scores, higher = harder (interval, min, max, medium).
        labels: (N,) class indices 0..C-1.
        per_class: images to keep per class: one number, or one per class.
        ids: (N,) source ids, which break ties between equal scores.
        k: interval sampling's stride over each class's difficulty ranking.
        seed: the random selector's seed.
        features: (N, D) image features (kcenter, herding).

    Returns:
        The selected positions (indices into the inputs), sorted, int64.

    Raises:
        UserError: an unknown selector, or one without the inputs it needs.
    """
    from d2c_pack.select.selectors import select as run

    return run(name, scores=scores, labels=labels, per_class=per_class, ids=ids, k=k, seed=seed, features=features)


def build(out: str | Path | None = None, *, source: str | None = None, recipe: str | None = None, **options: Any) -> Path:
    """Builds a condensed dataset folder: score (cached), select, attach, package (``d2c-pack build``).

    Args:
        out: the folder to write, laid out as a Hub dataset repository (else the recipe's ``out``).
        source: the labelled images (else the recipe's ``source``).
        recipe: a shipped recipe name (``"demo"``, ``"imagenet-256-d2c-10k"``) or a YAML path.
        **options: any other ``d2c-pack build`` option (``budget="10/class"``, ``selector="interval"``,
            ``text_encoder="none"``, ``device="cpu"``, ...).

    Returns:
        The folder written (or found already built from the same settings and inputs).

    Raises:
        UserError: a source, model or option that cannot be used, or an ``out`` holding something else.
    """
    from d2c_pack.build import BuildConfig
    from d2c_pack.build import build as run

    return run(BuildConfig(**_settings(recipe, None, {"out": out and str(out), "source": source}, options)))


def push(folder: str | Path, repo_id: str, *, tag: str | None = None, **options: Any) -> PushResult:
    """Publishes a built folder as a Hub dataset, verified first, with retries (``d2c-pack push``).

    The token comes from ``HF_TOKEN`` or the stored login; ``HF_ENDPOINT`` names another Hub.

    Args:
        folder: a folder written by :func:`build`.
        repo_id: the Hub dataset repository, ``ORG/NAME``.
        tag: the version to tag the commit with (``"v1.0"``).
        **options: any other ``d2c-pack push`` option (``private=True``, ``force=True``, ...).

    Returns:
        The repository, commit and revision; ``result.load_line()`` is the ``load_dataset`` call that reads it.

    Raises:
        UserError: a folder that fails verification, a missing token, or a Hub refusal.
    """
    from d2c_pack.hub import PushConfig
    from d2c_pack.hub import push as run

    return run(PushConfig(repo_id=repo_id, source_dir=str(folder), tag=tag, **options))


def verify(location: str | Path) -> list[str]:
    """Checks every file of a built folder or Hub revision against its manifest, and the parquet schemas against the card.

    Args:
        location: a local folder, or a Hub dataset ``ORG/NAME[@REVISION]`` (its data is not downloaded).

    Returns:
        Every problem found, one line each; empty when the dataset is intact.

    Raises:
        UserError: a location that is no d2c-pack dataset.
    """
    from d2c_pack.verify import locate
    from d2c_pack.verify import verify as run

    return run(locate(str(location)))


def load_backbone(
    path: str | Path, *, use_ema: bool = True, map_location: str = "cpu", num_heads: int | None = None
) -> tuple[DiT, BackboneConfig]:
    """Loads a trained backbone in eval mode.

    Args:
        path: a model folder written by :func:`train`, a training checkpoint, an official
            DiT/SiT ``.pt`` file, a REPA ``train.py`` checkpoint, or ``demo:digits``.
        use_ema: the EMA weights of a training checkpoint rather than the raw ones.
        map_location: the device to load the weights onto.
        num_heads: the attention heads of a ``.pt`` whose width is no DiT/SiT size (refused without).

    Returns:
        The network and its configuration (architecture, classes, image size, VAE).

    Raises:
        UserError: a path that holds no backbone.
    """
    from d2c_pack.models import load_backbone as run

    return run(path, use_ema=use_ema, map_location=map_location, num_heads=num_heads)


def train(out: str | Path | None = None, *, data: str | None = None, source: str | None = None, recipe: str | None = None, **options: Any) -> Path:
    """Trains (or resumes) SiT with DC-Embedding and visual alignment (``d2c-pack train``).

    Args:
        out: the run folder; training again into it resumes from its newest checkpoint.
        data: a condensed dataset: a folder from :func:`build` or a Hub ``ORG/NAME[@REVISION]``.
        source: train on a source's images instead (then pass ``text=False, align=False``).
        recipe: a recipe whose ``train:`` section (or top-level keys) gives the settings (``"demo"``).
        **options: any other ``d2c-pack train`` option (``model="SiT-B/4"``, ``steps=1000``, ...).

    Returns:
        The folder of the final EMA model, for :func:`load_backbone`.

    Raises:
        UserError: data, settings or a run folder that cannot be used; nothing is written then.
    """
    from d2c_pack.train.loop import TrainConfig
    from d2c_pack.train.loop import train as run

    return run(TrainConfig(**_settings(recipe, "train", {"out": out and str(out), "data": data, "source": source}, options)))


def load_subset(data: str | Path, *, columns: Sequence[str] | None = None, device: str = "cpu", resolution: int | None = None) -> SubsetArrays:
    """Loads a condensed dataset's training columns into memory, decoded once, as ``d2c-pack train`` holds them.

    A build (a folder or a Hub revision) is decoded from its parquet shards row group by row group,
    with no Arrow copy in the ``datasets`` cache; batches are then gathered by index, thousands of
    rows per second where reading rows one at a time gives hundreds.

    Args:
        data: a folder from :func:`build`, a Hub ``ORG/NAME[@REVISION]``, or another labelled dataset.
        columns: the columns besides ``label`` (default: every training column the dataset has:
            ``latent`` (else ``image``), ``text_embedding``, ``text_mask``, ``visual_tokens``).
        device: where batches go; on ``"cuda"`` the columns live on the GPU when they take at most a
            quarter of its free memory, else in pinned host memory.
        resolution: the side R of the images' ADM centre crop (default: the build's).

    Returns:
        ``SubsetArrays``: ``columns`` (name → tensor, one row per sample, in the stored dtypes: fp16
        arrays, int8 masks, uint8 (3, R, R) images), ``class_names``, and ``gather(indices)``, a batch
        as the trainer takes it (float32 arrays, int64 labels and masks, images in [-1, 1]) on ``device``.

    Raises:
        UserError: a dataset that cannot be loaded, or lacks a column asked for.
    """
    from d2c_pack.train.memory import load_subset as run

    return run(str(data), columns=columns, device=device, resolution=resolution)
