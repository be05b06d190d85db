"""The dataset card (README.md) of a condensed dataset, rendered with ``huggingface_hub.DatasetCard``.

The card is a function of the manifest (everything but its file list) and of the configs'
``DatasetInfo``: ``build`` renders it as it writes the folder, and ``d2c-pack card DIR``
(:func:`update_card`) renders it again, with another licence, description or title, and re-seals
the manifest, so the folder stays verifiable and pushable.

The YAML metadata carries ``configs`` and ``dataset_info`` written by ``datasets``' own
helpers, so ``load_dataset(folder_or_repo)`` returns exactly the declared features, and, for
ImageNet-derived data, the ImageNet licence and terms as the gate prompt. The body comes from
the Jinja template ``cards/dataset_card.md`` and shows two matplotlib figures written to
``assets/`` at build time: where the selection fell in each class's difficulty distribution, and
a grid of selected images from easy to hard.
"""

from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from d2c_pack.core.arrays import feature_dtype, feature_shape
from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.models.sizes import PATCH_SIZES
from d2c_pack.publish.contents import NAMED_INPUTS, Package, hub_dataset_id
from d2c_pack.publish.layout import CARD_FILE, CARD_SETTINGS, EXPLORE_PAGE, LAYOUT_VERSION, MANIFEST_FILE, RECIPE_FILE, manifest_text, recipe_text
from d2c_pack.publish.verify import LocalFolder, read_manifest, verify

TEMPLATE = "dataset_card.md"
IMAGENET = "imagenet"  # the licence value that stands for ImageNet's terms of access
# What each column of the default config means, for the card's schema table.
COLUMN_NOTES = {
    "image": "the source image's original bytes (not re-encoded)",
    "label": "class of the image in the source",
    "source_id": "stable id of the image in the source",
    "difficulty": "diffusion difficulty score s(x, c); higher = harder",
    "difficulty_rank": "rank of the score within its class, 0 = easiest",
    "caption": "the text the embedding encodes (class prompt or generated caption)",
    "text_embedding": "token embeddings of the caption, padded/truncated to L tokens (zeros on padding)",
    "text_mask": "1 for real tokens, 0 for padding",
    "visual_tokens": "DINOv2 patch tokens after the final layer norm",
    "visual_cls": "DINOv2 CLS token after the final layer norm",
    "latent": "SD-VAE posterior mean and std concatenated (unscaled; sample mean + std·ε, then × 0.18215)",
}
HISTOGRAM_FILE = "assets/difficulty.png"
SAMPLES_FILE = "assets/samples.png"
MAX_PLOTTED_CLASSES = 10  # classes shown in each figure (evenly spread over the class list)
SAMPLES_PER_CLASS = 8  # grid columns: selected images from easiest to hardest
IMAGENET_LICENCE = {
    "license": "other",
    "license_name": "imagenet",
    "license_link": "https://image-net.org/download.php",
}
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
SELECTION_FEATURES = {"scorer": "the scorer's pooled tokens", "visual_cls": "the visual encoder's CLS token"}
# Training hint: backbone size by subset rows (the D2C paper trains SiT-XL/2 on its 10k–50k ImageNet subsets).
MODEL_SIZE_BY_ROWS = ((1_000, "T"), (10_000, "S"))
SD_VAE_DOWNSAMPLE = 8  # the trainer's default VAE (sd-vae-ft-ema), for a latent-space subset without a latent column


def size_category(num_rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if num_rows < limit), "1M<n<10M")


def licence(manifest: dict) -> str:
    """The card's licence: the recipe's ``license``, else ImageNet's terms for ImageNet-derived data, else ``unknown``."""
    return manifest["recipe"].get("license") or (IMAGENET if manifest["source"]["imagenet"] else "unknown")


def card_data(manifest: dict, infos: DatasetInfosDict) -> DatasetCardData:
    """Metadata: names, licence, tasks, tags, size and the ``configs`` / ``dataset_info`` that ``datasets`` reads back."""
    recipe, features = manifest["recipe"], infos["default"].features
    licence_fields = {**IMAGENET_LICENCE, "extra_gated_prompt": imagenet_terms()} if licence(manifest) == IMAGENET else {"license": licence(manifest)}
    hub_source = hub_dataset_id(recipe["source"])
    data = DatasetCardData(
        pretty_name=pretty_name(manifest),
        # Text-to-image only where the rows carry text; every subset trains unconditional (and class-conditional) generators.
        task_categories=(["text-to-image"] if "text_embedding" in features else []) + ["unconditional-image-generation"],
        tags=["d2c", "dataset-condensation", "diffusion", "image-generation"],
        size_categories=[size_category(manifest["selection"]["rows"])],
        **({"source_datasets": [hub_source]} if hub_source else {}),
        **licence_fields,
    )
    configs = {name: {"data_files": [{"split": "train", "path": f"{folder}/train-*"}]} for name, folder in _config_folders(infos)}
    configs["default"]["default"] = True
    for name, info in infos.items():
        info.config_name = name
    infos.to_dataset_card_data(data)
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data


def imagenet_terms() -> str:
    """The ImageNet terms of access, shown as the gate prompt of ImageNet-derived repositories."""
    return (resources.files("d2c_pack") / "cards" / "imagenet_terms.md").read_text(encoding="utf-8").strip()


def _config_folders(infos: DatasetInfosDict) -> list[tuple[str, str]]:
    return [(name, "data" if name == "default" else name) for name in infos]


def pretty_name(manifest: dict) -> str:
    """The card's title: the recipe's ``pretty_name``, else the source's name with the budget and selector."""
    recipe = manifest["recipe"]
    if recipe.get("pretty_name"):
        return recipe["pretty_name"]
    name = manifest["source"]["name"]
    source = name.removeprefix("hf:").rstrip("/").split("/")[-1] or name
    return f"{source} condensed by D2C ({recipe['budget']}, {recipe['selector']})"


def render_card(manifest: dict, infos: DatasetInfosDict) -> str:
    """The README.md text of a condensed dataset folder, from its manifest (the file list is not needed) and its configs' infos."""
    recipe, source, selection, inputs = manifest["recipe"], manifest["source"], manifest["selection"], manifest["inputs"]
    features = infos["default"].features
    class_names = features["label"].names
    present = [c for c, size in enumerate(source["class_images"]) if size > 0]
    rows_per_class = np.array(selection["per_class_rows"])[present]
    template = resources.files("d2c_pack") / "cards" / TEMPLATE
    card = DatasetCard.from_template(
        card_data(manifest, infos),
        template_str=template.read_text(encoding="utf-8"),
        pretty_name=pretty_name(manifest),
        description=(recipe.get("description") or "").strip(),
        source_text=f"`{recipe['source']}`" if recipe["source"] else f"the local source `{source['name']}`",
        attached_text=attached_text(features),
        rebuild_flags=rebuild_flags(manifest),
        split=recipe["split"],
        source_fingerprint=inputs["source_fingerprint"],
        scorer=manifest["models"].get("scorer", {}).get("name", recipe["scorer"]),
        prediction=inputs["scorer_prediction"],
        scorer_sha256=inputs["scorer_sha256"],
        timesteps=recipe["timesteps"],
        selector=recipe["selector"],
        interval=selection["interval"],
        stride_range=selection["interval_strides"],
        selection_text=selection_text(manifest),
        grid_text=grid_text(manifest),
        budget=recipe["budget"],
        budget_text=_budget_text([selection["per_class_budget"][c] for c in present]),
        resolution=recipe["resolution"],
        seed=recipe["seed"],
        encoders={k: v for k, v in inputs.items() if k in ("text_encoder", "prompt_template", "captioner", "visual_encoder", "vae")},
        num_rows=selection["rows"],
        num_classes=len(present),
        label_space=len(class_names),
        class_rows=[(class_names[c], int(rows)) for c, rows in zip(present, rows_per_class)],
        rows_range=(int(rows_per_class.min()), int(np.median(rows_per_class)), int(rows_per_class.max())),
        num_scored=source["images"] - len(manifest["unreadable"]),
        num_unreadable=len(manifest["unreadable"]),
        version=manifest["version"],
        schema=[(name, _feature_text(feature), COLUMN_NOTES.get(name, "")) for name, feature in features.items()],
        array_columns=[(name, feature_shape(feature), feature_dtype(feature)) for name, feature in features.items() if feature_shape(feature) is not None],
        with_scores="scores" in infos,
        histogram=HISTOGRAM_FILE,
        samples=SAMPLES_FILE,
        explore=EXPLORE_PAGE if recipe.get("explore") else None,
        repo_id=recipe.get("repo_id") or "ORG/NAME",
        train_command=training_hint(manifest, infos),
        imagenet=licence(manifest) == IMAGENET,
    )
    return str(card)


def attached_text(features: datasets.Features) -> str:
    """The training-ready columns the rows carry, in words."""
    kinds = {"text_embedding": "text embeddings", "visual_tokens": "visual features", "visual_cls": "visual features", "latent": "VAE latents"}
    present = list(dict.fromkeys(kind for name, kind in kinds.items() if name in features))
    if not present:
        return "kept with their difficulty scores (no encoder columns attached)"
    return f"given training-ready columns ({', '.join(present)}) so that a diffusion model can be trained from them without running any encoder"


def rebuild_flags(manifest: dict) -> list[str]:
    """The flags a rebuild from ``d2c/recipe.yaml`` must add: the source and models it names by a local path, which the recipe leaves out."""
    recipe, models = manifest["recipe"], manifest["models"]
    local = {"source": manifest["source"]["name"]} if recipe["source"] is None else {}
    local |= {key: models[key]["name"] for key in NAMED_INPUTS if key in models and recipe[key] is None}
    return [f"--{key.replace('_', '-')} …/{name}" for key, name in local.items()]


def selection_text(manifest: dict) -> str:
    """What the difficulty figure shows of the selector: where its picks can fall in each class's ranking, and why."""
    recipe, selection, inputs = manifest["recipe"], manifest["selection"], manifest["inputs"]
    selector = recipe["selector"]
    if selector == "interval":
        if selection["reach"] is None:
            return "Every class had no more images than its budget and was taken whole."
        low, high = (round(100 * share) for share in selection["reach"])
        reach = f"{low}%" if low == high else f"{low}–{high}%"
        left = f"{100 - high}%" if low == high else f"{100 - high}–{100 - low}%"
        return (
            f"Interval sampling takes ranks 0, k, 2k, … of each class's difficulty ranking, from the easiest image "
            f"(k = {selection['interval']}), so its hardest pick is rank (m − 1)·k: the picks span the easiest {reach} "
            f"of each class's ranking, and the hardest {left} is never picked, by design."
        )
    if selector in ("kcenter", "herding"):
        features = SELECTION_FEATURES.get(inputs["selection_features"], inputs["selection_features"])
        rule = "cover the class's feature space (greedy k-center)" if selector == "kcenter" else "keep the mean of the picks near the class's mean feature (herding)"
        return f"The picks {rule} on {features}, not by difficulty: where they fall in difficulty is a by-product."
    return {
        "min": "The picks are the m easiest images of each class: they sit at the low (easy) end of each panel.",
        "max": "The picks are the m hardest images of each class: they sit at the high (hard) end of each panel.",
        "medium": "The picks are the m contiguous ranks around each class's median, from rank ⌊(n − m)/2⌋: they bunch in the middle of each panel.",
        "random": f"The picks are a uniform random draw from each class (seed {recipe['seed']}): they follow the class's own distribution.",
    }[selector]


def grid_text(manifest: dict) -> str:
    """What the sample grid shows: how many of how many selected images, for which classes."""
    rows = manifest["selection"]["per_class_rows"]
    present = [c for c, size in enumerate(manifest["source"]["class_images"]) if size > 0]
    shown = [rows[present[i]] for i in plotted_classes(len(present))]
    classes = f"all {len(present)} classes" if len(shown) == len(present) else f"{len(shown)} of the {len(present)} classes"
    low, high = min(shown), max(shown)
    selected = f"{low}" if low == high else f"{low}–{high}"
    if high <= SAMPLES_PER_CLASS:
        return f"The grid shows every selected image ({selected} per class) of {classes}, from easiest to hardest."
    return (
        f"The grid shows {SAMPLES_PER_CLASS} of the {selected} selected images per class, evenly spaced from the easiest "
        f"to the hardest pick, for {classes}."
    )


def training_hint(manifest: dict, infos: DatasetInfosDict) -> str:
    """A ``d2c-pack train`` command that fits the subset: backbone size from its rows, patch from the model's input side, and
    the flags its columns need (pixel space: ``--vae none``; no text or visual columns: ``--no-text`` / ``--no-align``).

    The patch is the smallest giving at most 16 × 16 tokens for SiT-XL (the paper's 256-px latent setting) and 8 × 8 for the
    smaller sizes. The input side is the latent column's, else the resolution (pixel space), or R/8 when the scorer worked
    on SD-VAE latents (the trainer then encodes the images with its default VAE).
    """
    features, resolution = infos["default"].features, manifest["recipe"]["resolution"]
    rows = manifest["selection"]["rows"]
    size = next((name for limit, name in MODEL_SIZE_BY_ROWS if rows < limit), "XL")
    if "latent" in features:
        side, pixels = feature_shape(features["latent"])[1], False
    else:
        pixels = manifest["inputs"]["scorer_vae_sha256"] is None
        side = resolution if pixels else resolution // SD_VAE_DOWNSAMPLE
    most_tokens = 16 if size == "XL" else 8
    patch = next((p for p in PATCH_SIZES if side // p <= most_tokens), PATCH_SIZES[-1])
    flags = [f"--model SiT-{size}/{patch}"]
    flags += ["--vae none"] if pixels else []
    flags += [] if "text_embedding" in features else ["--no-text"]
    flags += [] if "visual_tokens" in features else ["--no-align"]
    repo_id = manifest["recipe"].get("repo_id") or "ORG/NAME"
    return f"d2c-pack train --data {repo_id}@v1.0 {' '.join(flags)} --out RUN"


def update_card(folder: Path, **changes: str | None) -> Path:
    """Renders ``folder/README.md`` again from the manifest, with ``changes`` to the card settings (:data:`CARD_SETTINGS`;
    None: unchanged, "": back to automatic), records them in the manifest's recipe and ``d2c/recipe.yaml``, and
    re-seals the manifest with the new files' sha256 and size. Returns the card's path.

    Everything else must verify first (a hand edit of the card or recipe is replaced, any other problem refused). With no
    change, a freshly built folder keeps its bytes.
    """
    location = LocalFolder(folder)
    manifest = read_manifest(location)
    if manifest.get("layout") != LAYOUT_VERSION:
        raise UserError(f"{folder} was built by an older d2c-pack (layout {manifest.get('layout')}); rebuild it to render its card")
    rewritten = (CARD_FILE, RECIPE_FILE.as_posix())
    if problems := [problem for problem in verify(location) if not problem.startswith(rewritten)]:
        raise UserError(f"{folder} fails verification ({problems[0]}); rebuild it before rendering its card")
    if unknown := set(changes) - set(CARD_SETTINGS):
        raise ValueError(f"not card settings: {sorted(unknown)}")
    manifest["recipe"] |= {key: value or None for key, value in changes.items() if value is not None}
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard(location.read_text(CARD_FILE)).data)
    _replace(folder, CARD_FILE, render_card(manifest, infos))
    _replace(folder, RECIPE_FILE, recipe_text(manifest["recipe"]))
    for path in (CARD_FILE, RECIPE_FILE.as_posix()):
        manifest["files"][path] = {"sha256": sha256_file(folder / path), "size": (folder / path).stat().st_size}
    _replace(folder, MANIFEST_FILE, manifest_text(manifest))  # last: until then the old manifest tells that the folder is unsealed
    return folder / CARD_FILE


def _replace(folder: Path, path: str | Path, text: str) -> None:
    """Writes ``folder/path`` whole or not at all, through a hidden file in the folder's root (which ``verify`` ignores)."""
    temporary = folder / f".{Path(path).name}.partial"
    temporary.write_text(text)
    os.replace(temporary, folder / path)


def plotted_classes(num_classes: int) -> list[int]:
    """At most ``MAX_PLOTTED_CLASSES`` class indices, evenly spread."""
    count = min(num_classes, MAX_PLOTTED_CLASSES)
    return sorted({round(i * (num_classes - 1) / max(count - 1, 1)) for i in range(count)})


def write_assets(package: Package, images: dict[int, bytes], folder: Path) -> None:
    """Writes the card's two figures into ``folder/assets/`` (PNG bytes depend on nothing but the data).

    ``images``: the bytes of the subset's rows numbered in :func:`sample_positions`, kept while the rows were written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; also makes the output independent of the machine's backend
    (folder / "assets").mkdir(exist_ok=True)
    _save(_difficulty_figure(package, _figure_classes(package)), folder / HISTOGRAM_FILE)
    _save(_samples_figure(package, images), folder / SAMPLES_FILE)


def sample_positions(package: Package) -> set[int]:
    """The rows of the subset (numbered in selection order) whose images the sample grid shows."""
    return {row for rows in _sample_grid(package).values() for row in rows}


def _figure_classes(package: Package) -> list[int]:
    present = _present_classes(package)
    return [present[i] for i in plotted_classes(len(present))]


def _sample_grid(package: Package) -> dict[int, list[int]]:
    """Class → up to ``SAMPLES_PER_CLASS`` subset rows of it, evenly spread from its easiest to its hardest."""
    positions = package.selection.positions
    labels, ranks = package.scores.labels[positions], package.selection.ranks[positions]
    grid = {}
    for label in _figure_classes(package):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(ranks[members], kind="stable")]
        grid[label] = members[np.linspace(0, len(members) - 1, min(len(members), SAMPLES_PER_CLASS)).round().astype(int)].tolist() if len(members) else []
    return grid


def _difficulty_figure(package: Package, classes: list[int]):
    import matplotlib.pyplot as plt

    scores, selection, names = package.scores, package.selection, package.source.class_names
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[selection.positions] = True
    columns = min(len(classes), 5)
    rows = -(-len(classes) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.2 * rows), squeeze=False, sharey=False)
    for axis, label in zip(axes.flat, classes):
        members = scores.labels == label
        axis.hist(scores.scores[members], bins=30, color="#9aa5b1")
        for value in scores.scores[members & chosen]:
            axis.axvline(value, color="#d1495b", linewidth=0.8)
        axis.set_title(_short(names[label]), fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(classes) :]:
        axis.axis("off")
    shown = f"{len(classes)} of {len(names)} classes" if len(classes) < len(names) else f"all {len(names)} classes"
    figure.suptitle(f"Diffusion difficulty per class ({shown}); red: selected images", fontsize=10)
    figure.supxlabel("difficulty score (higher = harder)", fontsize=9)
    figure.tight_layout()
    return figure


def _samples_figure(package: Package, images: dict[int, bytes]):
    import matplotlib.pyplot as plt
    from PIL import Image

    grid = _sample_grid(package)
    figure, axes = plt.subplots(len(grid), SAMPLES_PER_CLASS, figsize=(SAMPLES_PER_CLASS, len(grid) * 1.05), squeeze=False)
    for row, (label, shown) in zip(axes, grid.items()):
        for axis in row:
            axis.axis("off")
        for axis, index in zip(row, shown):
            image = Image.open(io.BytesIO(images[index])).convert("RGB")
            axis.imshow(image.resize((64, 64), Image.BICUBIC))
        row[0].set_title(_short(package.source.class_names[label]), fontsize=7, loc="left")
    figure.suptitle("Selected images per class, easiest to hardest", fontsize=9)
    figure.tight_layout()
    return figure


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    # No "Software" entry: the PNG bytes then depend on the picture alone.
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def _present_classes(package: Package) -> list[int]:
    """The classes the source has images of: ImageNet sources holding some synsets keep all 1,000 in their label space."""
    return [c for c, size in enumerate(package.source.class_sizes) if size > 0]


def _short(name: str) -> str:
    return name.split(",")[0][:24]


def _budget_text(per_class: list[int]) -> str:
    low, high = min(per_class), max(per_class)
    return f"{low} per class" if low == high else f"{low}–{high} per class"


def _feature_text(feature: object) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return f"ClassLabel ({feature.num_classes} classes)"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if (shape := feature_shape(feature)) is not None:
        return f"{feature_dtype(feature)} {' × '.join(map(str, shape))} (fixed-size list{'s' if len(shape) > 1 else ''})"
    return type(feature).__name__
