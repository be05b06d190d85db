"""The dataset card (README.md) of a condensed dataset, rendered with ``huggingface_hub.DatasetCard``.

The YAML metadata carries ``configs`` and ``dataset_info`` written by ``datasets``' own
helpers, so ``load_dataset(folder_or_repo)`` returns exactly the declared features. The body
comes from the Jinja template ``cards/dataset_card.md``.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from d2c_pack import __version__

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
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(num_rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if num_rows < limit), "1M<n<10M")


def card_data(package: Package, infos: DatasetInfosDict) -> DatasetCardData:
    """Metadata: names, tags, size and the ``configs`` / ``dataset_info`` that ``datasets`` reads back."""
    recipe = package.recipe
    data = DatasetCardData(
        pretty_name=_pretty_name(recipe),
        task_categories=["text-to-image", "unconditional-image-generation"],
        tags=["d2c", "dataset-condensation", "diffusion", "image-generation"],
        size_categories=[size_category(len(package.selection.positions))],
        source_datasets=[recipe["source"]],
    )
    configs = {name: {"data_files": [{"split": "train", "path": f"{folder}/train-*"}]} for name, folder in _config_folders(infos)}
    configs["default"]["default"] = True
    for name, info in infos.items():
        info.config_name = name
    infos.to_dataset_card_data(data)
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data


def _config_folders(infos: DatasetInfosDict) -> list[tuple[str, str]]:
    return [(name, "data" if name == "default" else name) for name in infos]


def _pretty_name(recipe: dict) -> str:
    source = recipe["source"].removeprefix("hf:").rstrip("/").split("/")[-1] or recipe["source"]
    return f"{source} condensed by D2C ({recipe['budget']}, {recipe['selector']})"


def render_card(package: Package, infos: DatasetInfosDict) -> str:
    """The README.md text of a condensed dataset folder."""
    recipe, selection = package.recipe, package.selection
    data = card_data(package, infos)
    features = infos["default"].features
    template = resources.files("d2c_pack") / "cards" / TEMPLATE
    card = DatasetCard.from_template(
        data,
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
        budget=recipe["budget"],
        budget_text=_budget_text(selection.per_class),
        resolution=recipe["resolution"],
        seed=recipe["seed"],
        encoders={k: v for k, v in package.inputs.items() if k in ("text_encoder", "prompt_template", "captioner", "visual_encoder", "vae")},
        num_rows=len(selection.positions),
        num_scored=len(package.scores),
        num_unreadable=len(package.scores.errors),
        version=__version__,
        schema=[(name, _feature_text(feature), COLUMN_NOTES.get(name, "")) for name, feature in features.items()],
        with_scores=package.with_scores,
        repo_id="ORG/NAME",
    )
    return str(card)


def _budget_text(per_class: list[int]) -> str:
    low, high = min(per_class), max(per_class)
    return f"{low} per class" if low == high else f"{low}–{high} per class"


def _feature_text(feature: object) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return f"ClassLabel ({feature.num_classes} classes)"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.List):
        return f"List({feature.feature.dtype}, length {feature.length})"
    if hasattr(feature, "shape"):
        return f"{type(feature).__name__}({', '.join(map(str, feature.shape))}, {feature.dtype})"
    return type(feature).__name__
