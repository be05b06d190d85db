"""The Python API: the functions a script calls, with typed keyword arguments instead of the CLI's settings objects.

Each command's function takes the command's options as keyword-only arguments, by their Python
names (``budget="10/class"``, ``text_encoder="none"``, ``batch_size=64``), and optionally a
``recipe`` (a shipped recipe's name or a YAML path) whose keys fill the options not given. An
argument left at None is not given: it takes the recipe's value, else the settings' default. So a
model is switched off with the string ``"none"`` (``vae="none"``), as on the command line, not with None.
``import d2c_pack`` loads none of this: the package attributes load it on first use.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d2c_pack.core.recipe import read_recipe

if TYPE_CHECKING:
    import numpy as np

    from d2c_pack.core.hub_retry import RetryPolicy
    from d2c_pack.models.checkpoint import BackboneConfig
    from d2c_pack.models.dit import DiT
    from d2c_pack.publish.hub import PushResult
    from d2c_pack.selection.selectors import Budget, Features
    from d2c_pack.training.memory import SubsetArrays


def _settings(recipe: str | None, command: str | None, arguments: dict[str, Any], fields: Collection[str] | None = None) -> dict[str, Any]:
    """The settings' keyword arguments: the recipe's keys for ``command`` (those in ``fields``, when given),
    overridden by the ``arguments`` given, i.e. not None (``recipe`` itself excepted)."""
    base = {key: value for key, value in (read_recipe(recipe, command) if recipe else {}).items() if fields is None or key in fields}
    return base | {name: value for name, value in arguments.items() if name != "recipe" and value is not None}


def _as_str(path: str | Path | None) -> str | None:
    """A path argument as the settings hold it (a string), None staying None (not given)."""
    return None if path is None else str(path)


def score_source(
    source: str | None = None,
    *,
    scorer: str | None = None,
    recipe: str | None = None,
    # Source
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    revision: str | None = None,
    streaming: bool | None = None,
    # Scoring
    prediction: str | None = None,
    num_heads: int | None = None,
    vae: str | None = None,
    vae_precision: str | None = None,
    timesteps: int | None = None,
    seed: int | None = None,
    resolution: int | None = None,
    # Run
    batch_size: int | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    work: str | None = None,
) -> Path:
    """Scores every image of a source with a diffusion model, resuming from the score cache (``d2c-pack score``).

    Every argument but ``recipe`` left at None takes the recipe's value, else the default shown.

    Args:
        source: the labelled images: ``demo:digits``, ``hf:ORG/NAME``, a class-per-folder tree,
            a parquet file or folder, or a ``save_to_disk`` folder (required here or in the recipe).
        scorer: the frozen class-conditional diffusion model: an official DiT/SiT ``.pt``, a
            d2c-pack model folder or ``demo:digits`` (default ``DiT-XL-2-256x256.pt``).
        recipe: a shipped recipe name (``"demo"``) or a YAML path; a build recipe's
            selection and attach keys are ignored.
        split: the split of a Hub or ``datasets`` source; expressions such as ``"train[:10%]"`` work (default ``train``).
        image_column: the image column of a ``datasets`` source (default ``image``).
        label_column: the label column (ClassLabel or integer class index) of a ``datasets`` source (default ``label``).
        id_column: the column holding a stable image id (default: the stored file name, else split/index).
        revision: the branch, tag or commit of a Hub source to read.
        streaming: stream a Hub source instead of downloading it first, read front to back (default ``False``).
        prediction: what the scorer predicts, ``"epsilon"`` (DiT) or ``"velocity"`` (SiT) (default: from its file name or config).
        num_heads: the attention heads of an official or REPA ``.pt`` whose width and depth are no DiT/SiT size
            (default: the size's; such a file is refused without it).
        vae: the diffusers AutoencoderKL of a latent-space scorer, a local folder or a Hub id, optionally
            ``ID@REVISION`` (default: the scorer's own, ``stabilityai/sd-vae-ft-ema`` for the official DiT/SiT).
        vae_precision: what the scorer's VAE runs in: ``"fp32"`` (the official code's scores) or ``"bf16"`` (faster) (default ``fp32``).
        timesteps: the number |T| of stratified timesteps the loss is averaged over (default ``8``).
        seed: the seed of the per-(image, timestep) noise (default ``0``).
        resolution: the side R of the ADM centre crop; must match the scorer (default ``256``).
        batch_size: images per forward pass, each with all |T| noisy copies (default ``32``).
        chunk_size: images per cache chunk, the unit of resumption and of work per rank (default ``4096``).
        workers: DataLoader processes decoding and cropping images, 0 = in the main process (default ``4``).
        device: ``"auto"`` (this rank's GPU if any, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default ``auto``).
        work: the cache folder for scores (default: ``$D2C_PACK_CACHE``, else ``~/.cache/d2c-pack``).

    Returns:
        The merged score table (``scores.parquet``, one row per image) in the cache.

    Raises:
        UserError: a source, scorer or option that cannot be used.
    """
    arguments = dict(locals())  # every parameter, by its ScoreConfig field name; taken first, before the imports bind more locals
    from d2c_pack.selection.score import score_source as run
    from d2c_pack.selection.settings import ScoreConfig

    # A build recipe's selection and attach keys are not scoring's: they are left out, as `d2c-pack score` does.
    return run(ScoreConfig(**_settings(recipe, None, arguments, ScoreConfig.__dataclass_fields__)))


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
    from d2c_pack.selection.selectors import select as run

    return run(name, scores=scores, labels=labels, per_class=per_class, ids=ids, k=k, seed=seed, features=features)


def build(
    out: str | Path | None = None,
    *,
    source: str | None = None,
    recipe: str | None = None,
    scorer: str | None = None,
    # Source
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    revision: str | None = None,
    streaming: bool | None = None,
    # Scoring
    prediction: str | None = None,
    num_heads: int | None = None,
    vae_precision: str | None = None,
    timesteps: int | None = None,
    seed: int | None = None,
    resolution: int | None = None,
    # Attach
    text_encoder: str | None = None,
    prompt_template: str | None = None,
    captioner: str | None = None,
    visual_encoder: str | None = None,
    vae: str | None = None,
    # Selection
    budget: str | None = None,
    selector: str | None = None,
    interval: str | None = None,
    # Output and card
    with_scores: bool | None = None,
    explore: bool | None = None,
    max_shard_size: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    description: str | None = None,
    pretty_name: str | None = None,
    overwrite: bool | None = None,
    # Run
    batch_size: int | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    attach_batch_size: int | None = None,
    device: str | None = None,
    work: str | None = None,
) -> Path:
    """Builds a condensed dataset folder: score (cached), select, attach, package (``d2c-pack build``).

    Every argument but ``recipe`` left at None takes the recipe's value, else the default shown;
    a model is left out with ``"none"`` (``text_encoder="none"``), not None.

    Args:
        out: the folder to write, laid out as a Hub dataset repository (required here or in the recipe).
        source: the labelled images: ``demo:digits``, ``hf:ORG/NAME``, a class-per-folder tree,
            a parquet file or folder, or a ``save_to_disk`` folder (required here or in the recipe).
        recipe: a shipped recipe name (``"demo"``, ``"imagenet-256-d2c-10k"``) or a YAML path.
        scorer: the frozen class-conditional diffusion model: an official DiT/SiT ``.pt``, a
            d2c-pack model folder or ``demo:digits`` (default ``DiT-XL-2-256x256.pt``).
        split: the split of a Hub or ``datasets`` source; expressions such as ``"train[:10%]"`` work (default ``train``).
        image_column: the image column of a ``datasets`` source (default ``image``).
        label_column: the label column (ClassLabel or integer class index) of a ``datasets`` source (default ``label``).
        id_column: the column holding a stable image id (default: the stored file name, else split/index).
        revision: the branch, tag or commit of a Hub source to read.
        streaming: stream a Hub source instead of downloading it first, read front to back (default ``False``).
        prediction: what the scorer predicts, ``"epsilon"`` (DiT) or ``"velocity"`` (SiT) (default: from its file name or config).
        num_heads: the attention heads of an official or REPA ``.pt`` whose width and depth are no DiT/SiT size
            (default: the size's; such a file is refused without it).
        vae_precision: what the scorer's VAE runs in: ``"fp32"`` (the official code's scores) or ``"bf16"`` (faster) (default ``fp32``).
        timesteps: the number |T| of stratified timesteps the loss is averaged over (default ``8``).
        seed: the seed of the per-(image, timestep) noise (default ``0``).
        resolution: the side R of the ADM centre crop; must match the scorer (default ``256``).
        text_encoder: the transformers text encoder (T5, CLIP text, BERT-like, ``demo:minilm``) of the
            caption and text columns; ``"none"``: no such columns (default ``google/flan-t5-xl``).
        prompt_template: the caption of every image of a class; ``{name}`` is the class name's first synonym
            (default ``a photo of a {name}``).
        captioner: a transformers image-to-text model captioning each image instead of the class prompt; needs a text encoder.
        visual_encoder: the DINOv2 of the visual columns (transformers name or path, ``timm/NAME``,
            ``demo:digits-encoder``); ``"none"``: no visual columns (default ``facebook/dinov2-base``).
        vae: the diffusers AutoencoderKL of the latent column and of a latent-space scorer, a local folder or
            a Hub id, optionally ``ID@REVISION``; ``"none"``: no latent column, the scorer then uses its own
            (default ``stabilityai/sd-vae-ft-ema``).
        budget: how many images to keep: ``"0.8%"`` of each class's share, a total ``"10k"`` / ``"10000"``,
            or ``"10/class"`` (default ``0.8%``).
        selector: the selection rule: ``interval`` (D2C), ``min``, ``max``, ``medium``, ``random``, ``kcenter``
            or ``herding`` (default ``interval``).
        interval: the stride k of interval sampling, as a string (``"4"``), or ``"auto"`` = round(0.75 ·
            mean class size / per-class budget) (default ``auto``).
        with_scores: also publish every source image's score as the ``scores`` config (default ``True``).
        explore: also write ``assets/explore.html``, every class's difficulty ranking with kept and rejected
            images, linked from the card (default ``False``).
        max_shard_size: the largest parquet shard, in uncompressed Arrow size (default ``500MB``).
        repo_id: the Hub repository ``ORG/NAME`` the subset will be pushed to, for the card's usage snippets.
        license: the card's licence, a Hub licence id (``cc-by-4.0``, ``mit``, ``other``...) or ``"imagenet"``
            for ImageNet's terms (default: ``imagenet`` for ImageNet-derived data, else ``unknown``).
        description: Markdown paragraph(s) the card shows under its title.
        pretty_name: the card's title (default: SOURCE condensed by D2C (BUDGET, SELECTOR)).
        overwrite: replace an existing dataset folder built with other settings (default ``False``).
        batch_size: images per scoring forward pass, each with all |T| noisy copies (default ``32``).
        chunk_size: images per score cache chunk, the unit of resumption and of work per rank (default ``4096``).
        workers: DataLoader processes decoding and cropping images, 0 = in the main process (default ``4``).
        attach_batch_size: images per batch while attaching (default ``32``).
        device: ``"auto"`` (this rank's GPU if any, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default ``auto``).
        work: the cache folder for scores (default: ``$D2C_PACK_CACHE``, else ``~/.cache/d2c-pack``).

    Returns:
        The folder written (or found already built from the same settings and inputs).

    Raises:
        UserError: a source, model or option that cannot be used, or an ``out`` holding something else.
    """
    arguments = dict(locals())  # every parameter, by its BuildConfig field name; taken first, before the imports bind more locals
    from d2c_pack.pipeline.build import build as run
    from d2c_pack.pipeline.settings import BuildConfig

    return run(BuildConfig(**_settings(recipe, None, arguments | {"out": _as_str(out)})))


def push(
    folder: str | Path,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool | None = None,
    gated: bool | None = None,
    create_pr: bool | None = None,
    branch: str | None = None,
    message: str | None = None,
    force: bool | None = None,
    commit_bytes: int | None = None,
    retry: RetryPolicy | None = None,
) -> PushResult:
    """Publishes a built folder as a Hub dataset, verified first, with retries (``d2c-pack push``).

    The token comes from ``HF_TOKEN`` or the stored login; ``HF_ENDPOINT`` names another Hub.
    Every argument left at None takes the default shown.

    Args:
        folder: a folder written by :func:`build`.
        repo_id: the Hub dataset repository, ``ORG/NAME``.
        tag: the version to tag the commit with (``"v1.0"``).
        private: the repository's visibility (default: private for ImageNet-derived data, else public).
        gated: gate access behind the card's terms (default: gated for ImageNet-derived data).
        create_pr: open a pull request (all files in one commit) instead of committing to the branch
            in commits of at most ``commit_bytes`` (default ``False``).
        branch: the branch of the Hub repository to commit to (default: ``main``).
        message: the commit message.
        force: move the tag if it already exists (default ``False``).
        commit_bytes: the most a commit records, what a re-run may have to upload again if the Hub
            lost uncommitted objects (default: 5 GiB).
        retry: how each Hub request is retried (default: ``d2c_pack.core.hub_retry.DEFAULT_POLICY``).

    Returns:
        The repository, commit and revision; ``result.load_line()`` is the ``load_dataset`` call that reads it.

    Raises:
        UserError: a folder that fails verification, a missing token, or a Hub refusal.
    """
    arguments = dict(locals())  # every parameter, by its PushConfig field name but `folder`; taken before the imports bind more locals
    from d2c_pack.publish.hub import push as run
    from d2c_pack.publish.settings import PushConfig

    arguments["source_dir"] = str(arguments.pop("folder"))  # `folder` reads better in a call; the settings (and --from) name it source_dir
    return run(PushConfig(**_settings(None, None, arguments)))


def verify(location: str | Path) -> list[str]:
    """Checks every file of a built folder or Hub revision against its manifest, and the parquet schemas against the card.

    Args:
        location: a local folder, or a Hub dataset ``ORG/NAME[@REVISION]`` (its data is not downloaded).

    Returns:
        Every problem found, one line each; empty when the dataset is intact.

    Raises:
        UserError: a location that is no d2c-pack dataset.
    """
    from d2c_pack.publish.verify import locate
    from d2c_pack.publish.verify import verify as run

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
    from d2c_pack.models.checkpoint import load_backbone as run

    return run(path, use_ema=use_ema, map_location=map_location, num_heads=num_heads)


def train(
    out: str | Path | None = None,
    *,
    data: str | None = None,
    source: str | None = None,
    recipe: str | None = None,
    # Source (with `source`)
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    revision: str | None = None,
    # Model
    model: str | None = None,
    resolution: int | None = None,
    vae: str | None = None,
    text: bool | None = None,
    align: bool | None = None,
    class_cond: bool | None = None,
    encoder_depth: int | None = None,
    projector_dim: int | None = None,
    init: str | None = None,
    learn_sigma: bool | None = None,
    # Training
    proj_coeff: float | None = None,
    class_dropout: float | None = None,
    text_dropout: float | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    ema_warmup: bool | None = None,
    seed: int | None = None,
    data_memory_gb: float | None = None,
    # Output
    log_every: int | None = None,
    ckpt_every: int | None = None,
    ckpt_every_seconds: float | None = None,
    # Run
    workers: int | None = None,
    device: str | None = None,
    compile: bool | None = None,
) -> Path:
    """Trains (or resumes) SiT with DC-Embedding and visual alignment (``d2c-pack train``).

    Every argument but ``recipe`` left at None takes the recipe's value, else the default shown.

    Args:
        out: the run folder; training again into it resumes from its newest checkpoint (required here or in the recipe).
        data: a condensed dataset: a folder from :func:`build` or a Hub ``ORG/NAME[@REVISION]``.
        source: train on a source's images instead (then pass ``text=False, align=False``).
        recipe: a recipe whose ``train:`` section (or top-level keys) gives the settings (``"demo"``).
        split: the split of a Hub or ``datasets`` source; expressions such as ``"train[:10%]"`` work (default ``train``).
        image_column: the image column of a ``datasets`` source (default ``image``).
        label_column: the label column (ClassLabel or integer class index) of a ``datasets`` source (default ``label``).
        id_column: the column holding a stable image id (default: the stored file name, else split/index).
        revision: the branch, tag or commit of a Hub source to read.
        model: the backbone, e.g. ``SiT-XL/2``, ``SiT-B/4``, ``SiT-T/4`` (tiny, for demos) (default ``SiT-XL/2``).
        resolution: the side R of the ADM centre crop (default: with ``data`` the subset's, which
            no other value may contradict, else 256).
        vae: the diffusers AutoencoderKL: ``"auto"`` is a latent column's (from the manifest) or, for images,
            ``stabilityai/sd-vae-ft-ema``; ``"none"``: pixel space (default ``auto``).
        text: condition on ``text_embedding``/``text_mask`` through the DC-Embedding (default ``True``).
        align: add the visual-alignment loss against ``visual_tokens`` (default ``True``).
        class_cond: condition on the class label (default ``True``).
        encoder_depth: the block whose output is aligned (default: 8; ⌈depth/3⌉ for models under 24 blocks).
        projector_dim: the hidden width of the alignment projector (default ``2048``, REPA's).
        init: the initial weights: an official SiT/DiT ``.pt``, or a d2c-pack model or run folder.
        learn_sigma: keep the official 2C-channel output layout, the extra channels unused (default ``True``).
        proj_coeff: the weight λ of the alignment loss (default ``0.5``).
        class_dropout: the probability of dropping the label and the text together, the null condition
            CFG samples with (default ``0.1``).
        text_dropout: the extra probability of dropping the text alone (default ``0.0``).
        steps: the total optimisation steps (default ``400000``).
        batch_size: the global batch size, over all processes (default ``256``).
        lr: the AdamW learning rate, constant (default ``0.0001``).
        weight_decay: the AdamW weight decay (default ``0.0``).
        grad_clip: the gradient-norm clipping threshold (default ``1.0``).
        ema_decay: the EMA decay of the exported weights, from step 0 (default ``0.9999``).
        ema_warmup: warm the decay up as diffusers' EMAModel, for runs of a few hundred steps (default ``False``).
        seed: the seed of initialisation, batch order, noise and dropout (default ``0``).
        data_memory_gb: GiB of decoded training columns a process may hold in memory; a larger subset is
            read in place, as is any with 0 (default: half the available RAM over the node's processes).
        log_every: steps between ``metrics.jsonl`` lines, each the mean over its steps (default ``100``).
        ckpt_every: steps between checkpoints (default ``10000``).
        ckpt_every_seconds: also checkpoint at the first log step once this many seconds of training
            have passed since the last checkpoint (only the newest such one is kept).
        workers: DataLoader worker processes per rank, 0 = in the main process (default ``4``).
        device: ``"auto"`` (this rank's GPU if any, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default ``auto``).
        compile: ``torch.compile`` the backbone (default ``False``).

    Returns:
        The folder of the final EMA model, for :func:`load_backbone`.

    Raises:
        UserError: data, settings or a run folder that cannot be used; nothing is written then.
    """
    arguments = dict(locals())  # every parameter, by its TrainConfig field name; taken first, before the imports bind more locals
    from d2c_pack.training.loop import train as run
    from d2c_pack.training.settings import TrainConfig

    return run(TrainConfig(**_settings(recipe, "train", arguments | {"out": _as_str(out)})))


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
    from d2c_pack.training.memory import load_subset as run

    return run(str(data), columns=columns, device=device, resolution=resolution)
