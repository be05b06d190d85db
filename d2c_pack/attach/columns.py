"""The Attach columns of a condensed dataset and how they are computed and cached.

Three groups, each switched off by naming no model (``none``):

==========  ====================================================  ==========================
group       columns                                               computed
==========  ====================================================  ==========================
text        caption, text_embedding (L×D f16), text_mask (L i8)   once per class (class
                                                                  prompts) or per image
                                                                  (``--captioner``)
visual      visual_tokens (N_tok×D f16), visual_cls (D f32)       per image, DINOv2
latent      latent (2C×R/8×R/8 f16: posterior mean ‖ std)         per image, SD-VAE
==========  ====================================================  ==========================

Array columns are nested fixed-size lists (:func:`~d2c_pack.core.arrays.array_feature`), which
pyarrow, polars, DuckDB and ``datasets`` all read as numbers of a known shape.

Per-image columns go through a :class:`~d2c_pack.selection.chunks.ChunkCache` per group under
``WORK/attach/<group>/``, keyed by the source, the resolution and the models' weights, so
attaching is resumable, runs under ``torchrun``, and a later selection from the same source
only computes the images it has not seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from d2c_pack.attach.settings import AttachArgs
from d2c_pack.attach.text import TEXT_LENGTH, Captioner, TextEncoder, class_prompts, encode_class_prompts
from d2c_pack.attach.visual import VisualEncoder
from d2c_pack.core.arrays import array_feature, array_values, feature_shape
from d2c_pack.core.distributed import Context
from d2c_pack.core.errors import UserError
from d2c_pack.models.latents import VaeSpace, load_latent_space
from d2c_pack.selection.chunks import INDEX_FIELDS, ChunkCache, compute_chunks, list_array, list_values
from d2c_pack.selection.rowfile import RowFile, write_rows
from d2c_pack.sources.image_source import ImageSource
from d2c_pack.sources.preprocess import to_unit_range

CACHE_VERSION = 2  # bump when a change below alters what a cache holds (2: REPA's DINOv2 targets)
ROW_BATCH = 256  # rows converted to NumPy at a time when reading a cache back


class ColumnGroup:
    """Columns computed together; per-image groups have a cache and compute rows from crop batches."""

    features: dict[str, datasets.features.features.FeatureType]
    identity: dict[str, str]  # model name → fingerprint, recorded with the build
    cache: ChunkCache | None = None  # per-image groups also define ``compute(batch) -> pa.Table``

    def rows(self, indices: Sequence[int], labels: Sequence[int]) -> Iterator[dict]:
        """The group's column values for each image, in the order of ``indices`` (ascending)."""
        for table in self.cache.read(indices):
            _raise_on_errors(table)
            for batch in table.to_batches(max_chunksize=ROW_BATCH):
                arrays = {name: _column_array(batch.column(name), feature) for name, feature in self.features.items()}
                yield from (dict(zip(arrays, values)) for values in zip(*arrays.values()))


def _column_array(column: pa.Array, feature: object) -> np.ndarray | list:
    """An Arrow cache column (flat lists) as per-row values of the feature's shape."""
    if isinstance(feature, datasets.Value):
        return column.to_pylist()
    return array_values(column, feature_shape(feature))


def _raise_on_errors(table: pa.Table) -> None:
    failed = table.filter(pc.is_valid(table["error"]))
    if failed.num_rows:
        raise UserError(f"{failed.num_rows} selected images could not be read while attaching (first: {failed['source_id'][0]}: {failed['error'][0]})")


def _cache_schema(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema([*INDEX_FIELDS, *fields])


def _text_features(dim: int) -> dict:
    return {
        "caption": datasets.Value("string"),
        "text_embedding": array_feature((TEXT_LENGTH, dim), "float16"),
        "text_mask": array_feature((TEXT_LENGTH,), "int8"),
    }


class ClassPromptText(ColumnGroup):
    """Caption = the class prompt; its embedding is computed once per class and shared by the class's images."""

    def __init__(self, encoder: TextEncoder, class_names: list[str], template: str):
        self.captions = class_prompts(class_names, template)
        self.encoding = encode_class_prompts(encoder, class_names, template)
        self.features = _text_features(encoder.dim)
        self.identity = {"text_encoder": encoder.name, "text_encoder_sha256": encoder.fingerprint(), "prompt_template": template}

    def rows(self, indices: Sequence[int], labels: Sequence[int]) -> Iterator[dict]:
        for label in labels:
            yield {"caption": self.captions[label], "text_embedding": self.encoding.embedding[label], "text_mask": self.encoding.mask[label]}


class CaptionedText(ColumnGroup):
    """Caption of each image by an image-to-text model, then embedded."""

    def __init__(self, encoder: TextEncoder, captioner: Captioner, cache_key: dict, work: Path, chunk_size: int):
        self.encoder, self.captioner = encoder, captioner
        self.features = _text_features(encoder.dim)
        self.identity = {
            "text_encoder": encoder.name, "text_encoder_sha256": encoder.fingerprint(),
            "captioner": captioner.name, "captioner_sha256": captioner.fingerprint(),
        }  # fmt: skip
        fields = [pa.field("caption", pa.string()), pa.field("text_embedding", pa.list_(pa.float16())), pa.field("text_mask", pa.list_(pa.int8()))]
        self.cache = ChunkCache(work / "caption", cache_key | self.identity, _cache_schema(fields), chunk_size)

    def compute(self, batch: dict) -> pa.Table:
        images = [Image.fromarray(crop.permute(1, 2, 0).numpy()) for crop in batch["crops"]]
        captions = self.captioner.caption(images)
        encoding = self.encoder.encode(captions)
        columns = {"caption": captions, "text_embedding": list_array(encoding.embedding), "text_mask": list_array(encoding.mask)}
        return _rows(batch, columns, self.cache.schema)


class VisualColumns(ColumnGroup):
    """DINOv2 patch tokens and CLS of each image."""

    def __init__(self, encoder: VisualEncoder, cache_key: dict, work: Path, chunk_size: int, *, tokens: bool = True):
        self.encoder, self.tokens = encoder, tokens
        self.features = {"visual_cls": array_feature((encoder.dim,), "float32")}
        fields = [pa.field("visual_cls", pa.list_(pa.float32()))]
        if tokens:
            self.features = {"visual_tokens": array_feature((encoder.num_tokens, encoder.dim), "float16")} | self.features
            fields.insert(0, pa.field("visual_tokens", pa.list_(pa.float16())))
        self.identity = {"visual_encoder": encoder.name, "visual_encoder_sha256": encoder.fingerprint()}
        self.cache = ChunkCache(work / ("visual" if tokens else "visual_cls"), cache_key | self.identity, _cache_schema(fields), chunk_size)

    def compute(self, batch: dict) -> pa.Table:
        tokens, cls = self.encoder(batch["crops"])  # (B, N, D) float16, (B, D) float32
        columns = {"visual_cls": list_array(cls.numpy())}
        if self.tokens:
            columns = {"visual_tokens": list_array(tokens.numpy())} | columns
        return _rows(batch, columns, self.cache.schema)


class LatentColumn(ColumnGroup):
    """SD-VAE posterior mean and std of each image, unscaled (the trainer samples and scales them)."""

    def __init__(self, vae: str, resolution: int, device: torch.device, cache_key: dict, work: Path, chunk_size: int):
        self.space = load_latent_space(vae, device)
        if not isinstance(self.space, VaeSpace):
            raise UserError(f"--vae {vae!r} is not an AutoencoderKL")
        size = resolution // self.space.downsample
        self.device = device
        self.features = {"latent": array_feature((2 * self.space.channels, size, size), "float16")}
        self.identity = {
            "vae": self.space.reference, "vae_sha256": self.space.sha256,
            # How the trainer turns the stored (unscaled) posterior into model inputs: (latent − shift) · scale.
            "latent_scaling_factor": self.space.scaling_factor, "latent_shift_factor": self.space.shift_factor,
        }  # fmt: skip
        fields = [pa.field("latent", pa.list_(pa.float16()))]
        self.cache = ChunkCache(work / "latent", cache_key | self.identity, _cache_schema(fields), chunk_size)

    def compute(self, batch: dict) -> pa.Table:
        images = to_unit_range(batch["crops"].to(self.device))  # (B, 3, R, R) in [-1, 1]
        moments = self.space.posterior(images).half().cpu()  # (B, 2C, R/8, R/8)
        return _rows(batch, {"latent": list_array(moments.numpy())}, self.cache.schema)


def _rows(batch: dict, columns: dict, schema: pa.Schema) -> pa.Table:
    index = {"source_index": batch["indices"], "source_id": batch["source_ids"], "error": pa.nulls(len(batch["indices"]), pa.string())}
    return pa.table(index | columns, schema=schema)


@dataclasses.dataclass
class Attached:
    """The attached column groups of one build, ready to be read back row by row."""

    groups: list[ColumnGroup]

    @property
    def features(self) -> dict:
        return {name: feature for group in self.groups for name, feature in group.features.items()}

    @property
    def identity(self) -> dict:
        return {key: value for group in self.groups for key, value in group.identity.items()}

    def rows(self, indices: Sequence[int], labels: Sequence[int]) -> Iterator[dict]:
        """One dict of every attached column per image, in ascending index order."""
        streams = [group.rows(indices, labels) for group in self.groups]
        for _ in range(len(indices)):
            yield {key: value for stream in streams for key, value in next(stream).items()}


def attach_columns(
    args: AttachArgs,
    source: ImageSource,
    indices: Sequence[int],
    labels: Sequence[int],
    context: Context,
    *,
    resolution: int,
    work: Path,
    chunk_size: int,
    workers: int,
) -> Attached:
    """Computes (or finds in the cache) every enabled column for the images ``indices`` (ascending)."""
    key = {"version": CACHE_VERSION, "source": source.fingerprint(), "resolution": resolution}
    root, device = work / "attach", context.device
    groups: list[ColumnGroup] = []
    if args.text_encoder:
        encoder = TextEncoder(args.text_encoder, device)
        if args.captioner:
            groups.append(CaptionedText(encoder, Captioner(args.captioner, device), key, root, chunk_size))
        else:
            groups.append(ClassPromptText(encoder, source.class_names, args.prompt_template))
    if args.visual_encoder:
        groups.append(VisualColumns(VisualEncoder(args.visual_encoder, resolution, device), key, root, chunk_size))
    if args.vae:
        groups.append(LatentColumn(args.vae, resolution, device, key, root, chunk_size))
    per_image = [(group.cache, group.compute) for group in groups if group.cache is not None]
    if per_image:
        compute_chunks(per_image, source, indices, context, resolution=resolution, batch_size=args.attach_batch_size, workers=workers, description="attach")
    return Attached(groups)


def visual_cls_features(
    encoder: str,
    source: ImageSource,
    indices: Sequence[int],
    context: Context,
    *,
    resolution: int,
    batch_size: int,
    work: Path,
    chunk_size: int,
    workers: int,
) -> RowFile:
    """The CLS of the visual encoder ``encoder`` for the images ``indices`` (ascending), (N, D) float32: the kcenter/herding features.

    The cache's ``visual_cls`` column is copied chunk by chunk into a row file in the cache folder,
    named by the digest of ``indices``, from which the selectors read a class at a time.
    """
    key = {"version": CACHE_VERSION, "source": source.fingerprint(), "resolution": resolution}
    group = VisualColumns(VisualEncoder(encoder, resolution, context.device), key, work / "attach", chunk_size, tokens=False)
    compute_chunks(
        [(group.cache, group.compute)], source, indices, context,
        resolution=resolution, batch_size=batch_size, workers=workers, description="visual features",
    )  # fmt: skip
    indices = np.asarray(indices, dtype=np.int64)
    rows = group.cache.folder / f"cls-{hashlib.sha256(indices.tobytes()).hexdigest()[:16]}.npy"
    if rows.exists():
        return RowFile(rows)
    return write_rows(rows, len(indices), (_cls_block(table) for table in group.cache.read(indices)))


def _cls_block(table: pa.Table) -> np.ndarray:
    _raise_on_errors(table)
    return list_values(table["visual_cls"], np.float32)
