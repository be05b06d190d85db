"""Array columns are nested fixed-size lists that pyarrow, polars, DuckDB and datasets all read with their shape;
subsets built before, with datasets' Array2D/Array3D extension types, still read, inspect, verify and train the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_image_folder, make_official_scorer, make_tiny_dinov2, make_tiny_vae
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard
from rich.console import Console

from benchmarks.array_columns import main
from d2c_pack.core.arrays import array_feature, array_values, column_array, feature_dtype, feature_shape
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.verify import LocalFolder, describe, verify
from d2c_pack.training.loop import prepare_data
from d2c_pack.training.settings import TrainConfig

ROWS = 9
# Every array column of the tiny build: text (demo:minilm, L = 16), visual (tiny DINOv2, 7 × 7 tokens), latent (tiny VAE at R/2).
ARRAYS = {
    "text_embedding": ((16, 384), "float16"),
    "text_mask": ((16,), "int8"),
    "visual_tokens": ((49, 32), "float16"),
    "visual_cls": ((32,), "float32"),
    "latent": ((8, 8, 8), "float16"),
}


def legacy_array_feature(shape: tuple[int, ...], dtype: str) -> object:
    """How builds before declared their array columns: datasets' Array2D/Array3D extension types (1-D: a fixed-length List)."""
    if len(shape) == 1:
        return datasets.List(datasets.Value(dtype), length=shape[0])
    return {2: datasets.Array2D, 3: datasets.Array3D}[len(shape)](shape, dtype)


@pytest.fixture(scope="module")
def subsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 9 rows with every Attach column, built as now ("new") and as before ("legacy")."""
    root = tmp_path_factory.mktemp("arrays")
    settings = dict(
        source=str(make_image_folder(root / "images")), scorer=str(make_official_scorer(root / "scorer")), resolution=16, timesteps=2,
        chunk_size=8, workers=0, device="cpu", work=str(root / "work"), budget="3/class", interval="2", text_encoder="demo:minilm",
        visual_encoder=str(make_tiny_dinov2(root / "dinov2")), vae=str(make_tiny_vae(root / "vae")),
    )  # fmt: skip
    new = build(BuildConfig(**settings, out=str(root / "new")))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("d2c_pack.attach.columns.array_feature", legacy_array_feature)
        legacy = build(BuildConfig(**settings, out=str(root / "legacy")))
    return {"new": new, "legacy": legacy}


def shard(folder: Path) -> Path:
    (path,) = (folder / "data").glob("*.parquet")
    return path


def fixed_size_list(shape: tuple[int, ...], dtype: str) -> pa.DataType:
    arrow = pa.from_numpy_dtype(np.dtype(dtype))
    for size in reversed(shape):
        arrow = pa.list_(arrow, size)
    return arrow


def test_pyarrow_reads_fixed_size_lists_of_the_declared_sizes(subsets) -> None:
    schema = pq.read_schema(shard(subsets["new"]))
    assert {name: schema.field(name).type for name in ARRAYS} == {name: fixed_size_list(*spec) for name, spec in ARRAYS.items()}


def test_polars_reads_arrays_with_their_shape_as_numeric_numpy(subsets) -> None:
    frame = pl.read_parquet(shard(subsets["new"]))
    loaded = datasets.load_dataset(str(subsets["new"]), split="train")
    kinds = {"float16": pl.Float16, "float32": pl.Float32, "int8": pl.Int8}
    assert {name: frame.schema[name] for name in ARRAYS} == {name: pl.Array(kinds[dtype], shape) for name, (shape, dtype) in ARRAYS.items()}
    for name, (shape, dtype) in ARRAYS.items():
        values = frame[name].to_numpy()  # one numeric array, not an array of Python objects
        assert values.dtype == np.dtype(dtype) and values.shape == (ROWS, *shape)
        np.testing.assert_array_equal(values, column_array(loaded, name))
    assert frame["visual_tokens"].arr.get(0).to_numpy().shape == (ROWS, 32)  # .arr ops work on the column


def test_duckdb_reads_the_arrays_and_the_cards_cast_makes_them_fixed(subsets) -> None:
    path = shard(subsets["new"]).as_posix()
    card = DatasetCard.load(subsets["new"] / "README.md").text
    (column, fixed), = re.findall(r"CAST\((\w+) AS ([A-Z]+(?:\[\d+\])+)\)", card)
    assert (column, fixed) == ("text_embedding", "FLOAT[384][16]")  # DuckDB writes the innermost size first
    with duckdb.connect() as con:
        types = {name: kind for name, kind, *_ in con.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()}
        # DuckDB's Parquet reader has no fixed-size type for a Parquet list: numeric nested lists, not an extension or BLOB.
        assert (types["text_embedding"], types["latent"], types["text_mask"]) == ("FLOAT[][]", "FLOAT[][][]", "TINYINT[]")
        cast = con.sql(f"SELECT CAST({column} AS {fixed}) AS {column} FROM '{path}'")
        assert [str(kind) for kind in cast.types] == [fixed]
        values = cast.pl()[column].to_numpy()
    loaded = datasets.load_dataset(str(subsets["new"]), split="train")
    assert values.shape == (ROWS, 16, 384)
    np.testing.assert_array_equal(values, column_array(loaded, column).astype(np.float32))


def test_datasets_formats_give_the_shapes_and_the_tensors_of_legacy_builds(subsets) -> None:
    new, legacy = (datasets.load_dataset(str(subsets[kind]), split="train") for kind in ("new", "legacy"))
    assert {name: new.features[name] for name in ARRAYS} == {name: array_feature(*spec) for name, spec in ARRAYS.items()}
    assert {name: legacy.features[name] for name in ARRAYS} == {name: legacy_array_feature(*spec) for name, spec in ARRAYS.items()}
    for fmt in ("numpy", "torch"):
        rows, old = new.with_format(fmt), legacy.with_format(fmt)
        for name, (shape, _) in ARRAYS.items():
            batch, before = rows[2:7][name], old[2:7][name]
            assert tuple(rows[0][name].shape) == shape and tuple(batch.shape) == (5, *shape)
            assert batch.dtype == before.dtype  # datasets upcasts both alike: float32, int64
            assert (batch == before).all()


def test_training_reads_new_and_legacy_subsets_alike(tmp_path: Path, subsets) -> None:
    data = {
        kind: prepare_data(
            TrainConfig(data=str(folder), out=str(tmp_path / kind), model="SiT-T/2", resolution=None, vae="none", device="cpu", workers=0),
            torch.device("cpu"),
        )
        for kind, folder in subsets.items()
    }  # fmt: skip
    new, legacy = data["new"], data["legacy"]
    assert (new.in_channels, new.input_size, new.text_dim, new.visual_dim) == (legacy.in_channels, legacy.input_size, legacy.text_dim, legacy.visual_dim)
    assert (new.in_channels, new.input_size, new.text_dim, new.visual_dim) == (4, 8, 384, 32)
    assert torch.equal(new.class_text.embedding, legacy.class_text.embedding) and new.class_text.embedding.dtype == torch.float16
    # The tensors datasets' torch format gives, which the trainer read before: same values, same dtypes (float32, int64).
    formatted = datasets.load_dataset(str(subsets["legacy"]), split="train").with_format("torch")
    for index in range(ROWS):
        row, before, expected = new.dataset[index], legacy.dataset[index], formatted[index]
        assert row.keys() == before.keys() == {"label", "latent", "text_embedding", "text_mask", "visual_tokens"}
        for name in row:
            assert row[name].dtype == before[name].dtype == expected[name].dtype
            assert torch.equal(row[name], expected[name]) and torch.equal(before[name], expected[name])


def test_card_states_the_fixed_size_lists_and_legacy_subsets_inspect_and_verify(subsets) -> None:
    card = DatasetCard.load(subsets["new"] / "README.md")
    features = DatasetInfosDict.from_dataset_card_data(card.data)["default"].features
    assert features["visual_tokens"] == array_feature((49, 32), "float16")
    assert "| `visual_tokens` | float16 49 × 32 (fixed-size lists) |" in card.text and "| `text_mask` | int8 16 (fixed-size list) |" in card.text
    assert 'column_array(subset, "latent")   # (rows, 8, 8, 8) float16' in card.text
    for folder in subsets.values():
        assert verify(LocalFolder(folder)) == []
        console = Console(record=True, width=200)
        for table in describe(LocalFolder(folder)):
            console.print(table)
        shown = console.export_text()
        assert all(re.search(rf"{name}\s.*\s{' × '.join(map(str, shape))}\s.*{dtype}", shown) for name, (shape, dtype) in ARRAYS.items())
    new, legacy = (datasets.load_dataset(str(subsets[kind]), split="train").select([5, 1, 8]) for kind in ("new", "legacy"))
    for name, (shape, dtype) in ARRAYS.items():
        values = column_array(new, name)
        assert values.dtype == np.dtype(dtype) and values.shape == (3, *shape)
        np.testing.assert_array_equal(values, column_array(legacy, name))


def test_array_values_reads_slices_chunks_and_unregistered_legacy_storage() -> None:
    grid = np.arange(5 * 2 * 3, dtype=np.float16).reshape(5, 2, 3)
    nested = pa.array(list(grid.tolist()), type=fixed_size_list((2, 3), "float16"))
    ragged = pa.array(list(grid.tolist()), type=pa.list_(pa.list_(pa.float16())))  # what a legacy Array2D column stores
    for column in (nested, ragged, pa.chunked_array([nested[:2], nested[2:]]), pa.chunked_array([nested])):
        values = array_values(column, (2, 3))
        np.testing.assert_array_equal(values, grid)
        assert values.dtype == np.float16 and values.flags.writeable
        np.testing.assert_array_equal(array_values(column[1:4], (2, 3)), grid[1:4])
    assert array_values(pa.chunked_array([], nested.type), (2, 3)).shape == (0, 2, 3)
    assert feature_shape(datasets.Array3D((2, 3, 4), "float16")) == (2, 3, 4) and feature_shape(array_feature((2, 3, 4), "int8")) == (2, 3, 4)
    assert feature_shape(datasets.List(datasets.Value("float32"))) is None and feature_shape(datasets.Value("float32")) is None
    assert feature_dtype(array_feature((2, 3), "float16")) == feature_dtype(datasets.Array2D((2, 3), "float16")) == "float16"


def test_benchmark_tiny_run_reads_both_layouts(tmp_path: Path) -> None:
    """``python benchmarks/array_columns.py --tiny``, run as its ``main`` in this process (no second interpreter importing the tool)."""
    out, bars = tmp_path / "array_columns.json", datasets.is_progress_bar_enabled()
    main(["--tiny", "--json", str(out)])
    assert datasets.is_progress_bar_enabled() == bars  # switched off while it ran, and back as it was
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["fixed-size lists", "Array2D (legacy)"]
    assert results["fixed-size lists"]["polars_numpy"] == "float16 (16, 4, 8)"  # polars gives the numbers, not Python objects
    assert all(figures["trainer_row_ms"] > 0 and figures["column_array_s"] >= 0 for figures in results.values())
