"""The dataset card (README.md) of a condensed dataset, rendered with ``huggingface_hub.DatasetCard``.

The YAML metadata carries ``configs`` and ``dataset_info`` written by ``datasets``' own
helpers, so ``load_dataset(folder_or_repo)`` returns exactly the declared features, and, for
ImageNet-derived data, the ImageNet licence and terms as the gate prompt. The body comes from
the Jinja template ``cards/dataset_card.md`` and shows two matplotlib figures written to
``assets/``: where the selection fell in each class's difficulty distribution, and a grid of
selected images from easy to hard.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from d2c_pack.arrays import feature_dtype, feature_shape
from d2c_pack.explore import PAGE_FILE
from d2c_pack.sources import is_imagenet
from d2c_pack.version import __version__

if TYPE_CHECKING:
    from d2c_pack.package import Package

TEMPLATE = "dataset_card.md"
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


def size_category(num_rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if num_rows < limit), "1M<n<10M")


def card_data(package: Package, infos: DatasetInfosDict) -> DatasetCardData:
    """Metadata: names, licence, tags, size and the ``configs`` / ``dataset_info`` that ``datasets`` reads back."""
    recipe = package.recipe
    licence = {**IMAGENET_LICENCE, "extra_gated_prompt": imagenet_terms()} if is_imagenet(package.source) else {"license": "unknown"}
    data = DatasetCardData(
        pretty_name=_pretty_name(recipe),
        task_categories=["text-to-image", "unconditional-image-generation"],
        tags=["d2c", "dataset-condensation", "diffusion", "image-generation"],
        size_categories=[size_category(len(package.selection.positions))],
        source_datasets=[recipe["source"]],
        **licence,
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


def _pretty_name(recipe: dict) -> str:
    source = recipe["source"].removeprefix("hf:").rstrip("/").split("/")[-1] or recipe["source"]
    return f"{source} condensed by D2C ({recipe['budget']}, {recipe['selector']})"


def render_card(package: Package, infos: DatasetInfosDict) -> str:
    """The README.md text of a condensed dataset folder."""
    recipe, selection, scores = package.recipe, package.selection, package.scores
    features = infos["default"].features
    rows_per_class = np.bincount(scores.labels[selection.positions], minlength=package.source.num_classes)
    present = _present_classes(package)
    template = resources.files("d2c_pack") / "cards" / TEMPLATE
    card = DatasetCard.from_template(
        card_data(package, infos),
        template_str=template.read_text(encoding="utf-8"),
        source=recipe["source"],
        split=recipe["split"],
        source_fingerprint=package.inputs["source_fingerprint"],
        scorer=recipe["scorer"],
        prediction=package.inputs["scorer_prediction"],
        scorer_sha256=package.inputs["scorer_sha256"],
        timesteps=recipe["timesteps"],
        selector=recipe["selector"],
        interval=selection.interval,
        stride_range=selection.stride_range(),
        budget=recipe["budget"],
        budget_text=_budget_text([selection.per_class[c] for c in present]),
        resolution=recipe["resolution"],
        seed=recipe["seed"],
        encoders={k: v for k, v in package.inputs.items() if k in ("text_encoder", "prompt_template", "captioner", "visual_encoder", "vae")},
        num_rows=len(selection.positions),
        num_classes=len(present),
        label_space=package.source.num_classes,
        class_rows=[(package.source.class_names[c], int(rows_per_class[c])) for c in present],
        rows_range=(int(rows_per_class[present].min()), int(np.median(rows_per_class[present])), int(rows_per_class[present].max())),
        num_scored=len(scores),
        num_unreadable=len(scores.errors),
        version=__version__,
        schema=[(name, _feature_text(feature), COLUMN_NOTES.get(name, "")) for name, feature in features.items()],
        array_columns=[(name, feature_shape(feature), feature_dtype(feature)) for name, feature in features.items() if feature_shape(feature) is not None],
        with_scores=package.with_scores,
        histogram=HISTOGRAM_FILE,
        samples=SAMPLES_FILE,
        explore=PAGE_FILE if package.recipe.get("explore") else None,
        repo_id=recipe.get("repo_id") or "ORG/NAME",
        imagenet=is_imagenet(package.source),
    )
    return str(card)


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
