"""Fixed-shape array columns: declared as nested fixed-size lists, read back as NumPy.

A (49, 64) float16 column is ``List(List(Value("float16"), length=64), length=49)``, in Arrow
``fixed_size_list<fixed_size_list<halffloat>[64]>[49]``. Every Arrow reader knows that type and
its shape: pyarrow, polars (``Array(Float16, shape=(49, 64))``, whose ``to_numpy()`` is a
(rows, 49, 64) array) and ``datasets`` (its NumPy and torch formats give (rows, 49, 64)).
DuckDB's Parquet reader has no fixed-size type for a Parquet list and reads ``FLOAT[][]``;
``CAST(column AS FLOAT[64][49])`` makes it a fixed array there.

Datasets built before used ``datasets``' own ``Array2D``/``Array3D`` extension types, whose
shape only ``datasets`` knows (polars sees an opaque extension, DuckDB ``FLOAT[][]``). They are
still read here: :func:`feature_shape` and :func:`array_values` accept both.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa

from d2c_pack.core.errors import UserError

LEGACY_ARRAY_FEATURES = (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)


def array_feature(shape: Sequence[int], dtype: str) -> datasets.List:
    """The feature of a column whose every row is a ``shape`` array of ``dtype``: fixed-size lists nested ``len(shape)`` deep."""
    feature = datasets.Value(dtype)
    for length in reversed(shape):
        feature = datasets.List(feature, length=length)
    return feature


def feature_shape(feature: object) -> tuple[int, ...] | None:
    """The shape of one row of an array feature (nested fixed-length lists, or a legacy ``Array2D``…``Array5D``); None otherwise."""
    if isinstance(feature, LEGACY_ARRAY_FEATURES):
        return tuple(feature.shape)
    shape = []
    while isinstance(feature, datasets.List) and feature.length != -1:
        shape.append(feature.length)
        feature = feature.feature
    return tuple(shape) if shape and isinstance(feature, datasets.Value) else None


def feature_dtype(feature: object) -> str | None:
    """The element dtype of an array feature or of a ``Value``; None for other features."""
    if isinstance(feature, LEGACY_ARRAY_FEATURES):
        return feature.dtype
    while isinstance(feature, datasets.List):
        feature = feature.feature
    return feature.dtype if isinstance(feature, datasets.Value) else None


def array_values(column: pa.Array | pa.ChunkedArray, shape: Sequence[int]) -> np.ndarray:
    """An Arrow array column as one new NumPy array ``(rows, *shape)`` of its stored dtype, without a Python object per number.

    Takes nested fixed-size or variable lists (a cache's flat rows included) and the storage of
    the legacy ``datasets`` extension types, whether or not ``datasets`` registered them.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_leaf_values(chunk) for chunk in chunks]
    # One copy, so the array is writable and outlives the (often memory-mapped) Arrow buffers.
    values = np.concatenate(parts) if parts else np.empty(0, _leaf_type(column.type).to_pandas_dtype())
    return values.reshape(len(column), *shape)


def _leaf_values(array: pa.Array) -> np.ndarray:
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    while _is_list(array.type):
        array = array.flatten()  # honours the array's offset, so a sliced column gives its own rows
    return array.to_numpy(zero_copy_only=False)


def _leaf_type(type_: pa.DataType) -> pa.DataType:
    if isinstance(type_, pa.ExtensionType):
        type_ = type_.storage_type
    while _is_list(type_):
        type_ = type_.value_type
    return type_


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or pa.types.is_large_list(type_)


def column_array(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """An array column (nested fixed-length lists, or a legacy Array2D/Array3D) as one NumPy array ``(rows, *shape)`` of its stored dtype.

    ``datasets``' NumPy and torch formats upcast float16 to float32 and int8 to int64; this reads
    the Arrow buffers as they are, without a Python object per number.
    """
    shape = feature_shape(dataset.features[name])
    if shape is None:
        raise UserError(f"column {name!r} is not an array column: {dataset.features[name]}")
    return array_values(dataset.with_format("arrow")[name], shape)
