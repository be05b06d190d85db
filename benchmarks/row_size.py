"""Bytes per row of a condensed dataset, column by column, for the ImageNet defaults (DESIGN §3.4).

Writes 200 rows with the declared features through ``datasets`` to parquet and reports the
file size per row and per 10k rows, with every Attach column and with each left out. The image
column holds random bytes of the mean ImageNet-1k train JPEG size (~110 KB; JPEG bytes do not
compress further) and the arrays hold Gaussian noise, a worst case for compression.

    python benchmarks/row_size.py [--resolution 256] [--text-dim 2048] [--visual-dim 768]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import datasets
import numpy as np
from rich.console import Console
from rich.table import Table

from d2c_pack.attach.text import TEXT_LENGTH
from d2c_pack.core.arrays import array_feature, feature_shape
from d2c_pack.publish.package import row_features

IMAGENET_MEAN_JPEG_BYTES = 110_000
ROWS = 200
GROUPS = {"text": ("caption", "text_embedding", "text_mask"), "visual": ("visual_tokens", "visual_cls"), "latent": ("latent",)}


def features(resolution: int, text_dim: int, visual_dim: int) -> datasets.Features:
    tokens = (224 * resolution // 256 // 14) ** 2
    latent = resolution // 8
    return datasets.Features(
        row_features([f"class {i}" for i in range(1000)])
        | {
            "caption": datasets.Value("string"),
            "text_embedding": array_feature((TEXT_LENGTH, text_dim), "float16"),
            "text_mask": array_feature((TEXT_LENGTH,), "int8"),
            "visual_tokens": array_feature((tokens, visual_dim), "float16"),
            "visual_cls": array_feature((visual_dim,), "float32"),
            "latent": array_feature((8, latent, latent), "float16"),
        }
    )


def random_rows(features: datasets.Features, rng: np.random.Generator) -> dict:
    columns = {
        "image": [{"bytes": rng.bytes(IMAGENET_MEAN_JPEG_BYTES), "path": None} for _ in range(ROWS)],
        "label": rng.integers(0, 1000, ROWS).tolist(),
        "source_id": [f"n01440764/n01440764_{i:05d}.JPEG" for i in range(ROWS)],
        "difficulty": rng.random(ROWS).astype(np.float32),
        "difficulty_rank": rng.integers(0, 1300, ROWS).astype(np.int32),
        "caption": ["a photo of a tench"] * ROWS,
        "text_mask": np.ones((ROWS, TEXT_LENGTH), np.int8),
        "visual_cls": rng.standard_normal((ROWS, *feature_shape(features["visual_cls"]))).astype(np.float32),
    }
    for name in ("text_embedding", "visual_tokens", "latent"):
        columns[name] = rng.standard_normal((ROWS, *feature_shape(features[name]))).astype(np.float16)
    return columns


def parquet_bytes_per_row(columns: dict, features: datasets.Features, keep: list[str]) -> float:
    subset = datasets.Features({name: features[name] for name in keep})
    dataset = datasets.Dataset.from_dict({name: columns[name] for name in keep}, features=subset)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.parquet"
        dataset.to_parquet(str(path))
        return path.stat().st_size / ROWS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--text-dim", type=int, default=2048, help="flan-t5-xl: 2048")
    parser.add_argument("--visual-dim", type=int, default=768, help="dinov2-base: 768")
    parser.add_argument("--json", default="benchmarks/results/row_size.json")
    args = parser.parse_args()

    declared = features(args.resolution, args.text_dim, args.visual_dim)
    columns = random_rows(declared, np.random.default_rng(0))
    everything = list(declared)
    variants = {"all columns": everything, **{f"without {g}": [c for c in everything if c not in cols] for g, cols in GROUPS.items()}}
    variants["no attach columns"] = [c for c in everything if not any(c in cols for cols in GROUPS.values())]
    results = {name: parquet_bytes_per_row(columns, declared, keep) for name, keep in variants.items()}

    table = Table(title=f"parquet bytes, ImageNet defaults at R={args.resolution} (D_text={args.text_dim}, D_vis={args.visual_dim})")
    for column in ("columns", "per row", "per 10k rows"):
        table.add_column(column, justify="right")
    for name, per_row in results.items():
        table.add_row(name, f"{per_row / 1e3:.0f} kB", f"{per_row * 1e4 / 1e9:.2f} GB")
    Console().print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "bytes_per_row": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
