"""``d2c-pack explore``: one self-contained HTML page to look at a condensed dataset before trusting it.

The page shows, per class, every scored source image's difficulty along the class's ranking
(a sorted-score curve and a histogram) with the selected images marked; thumbnails of the
selected images and of the rejected ones at the easiest, median and hardest ranks, with their
rank and score; a class picker with search by class name or image id; and the budget,
selector, stride and scorer the subset was built with. It is one file: CSS, JavaScript and
thumbnails (small WebP data URIs) are inline, nothing is fetched.

It reads the ``scores`` config (no model runs) and the selected rows' images from the default
config, of a built folder or a Hub revision. Rejected images are not in the subset: their
thumbnails come from the source when it is given (``--source``), else the page shows their
scores only and says so. ``build --explore`` writes the page into the dataset
(``assets/explore.html``), with every thumbnail, since the build has the source open.

Size and time are flat per class: each class is summarised by a histogram and a curve of a
fixed number of points, and at most ``SELECTED_THUMBNAILS`` + 3 thumbnails, so the page holds
every selected image's id, rank and score but grows with the classes, not the scores. The same
inputs give the same bytes (the page is hashed into the manifest when built into a dataset).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from markupsafe import Markup
from PIL import Image, ImageOps

from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar
from d2c_pack.publish.contents import Package, shown_name
from d2c_pack.publish.layout import EXPLORE_PAGE
from d2c_pack.publish.settings import REJECTED_GROUPS, SELECTED_THUMBNAILS, THUMBNAIL_SIZE
from d2c_pack.sources.image_source import _DECODE_ERRORS, ImageSource, open_source
from d2c_pack.version import __version__

if TYPE_CHECKING:
    from d2c_pack.publish.verify import Location

logger = logging.getLogger("d2c_pack.publish.explore")

TEMPLATE = "explore.html"
THUMBNAIL_QUALITY = 60  # WebP: about 1.2 kB a photograph's thumbnail, base64 included
HISTOGRAM_BINS = 40
CURVE_POINTS = 101  # the sorted-score curve, sampled at evenly spaced ranks
SCORE_COLUMNS = ["source_id", "label", "difficulty", "difficulty_rank", "selected"]

# Encoded image bytes of scores-table rows, as (row position, bytes), in any order; missing rows are left out.
ImageReader = Callable[[np.ndarray], Iterator[tuple[int, bytes]]]


@dataclasses.dataclass
class ScoreColumns:
    """The ``scores`` config as arrays: one entry per scored source image."""

    labels: np.ndarray  # (N,) int
    difficulty: np.ndarray  # (N,) float32
    ranks: np.ndarray  # (N,) int, 0 = easiest in its class
    selected: np.ndarray  # (N,) bool
    ids: pa.Array  # (N,) string; taken from only where shown


@dataclasses.dataclass
class Explorable:
    """What a page is made from: the scores, how the subset was chosen, and where the images are read."""

    title: str
    class_names: list[str]
    scores: ScoreColumns
    settings: list[tuple[str, str]]  # shown as they are: source, scorer, selector, budget …
    selected_images: ImageReader
    rejected_images: ImageReader | None  # None: the source is not reachable, rejected images by score only


def explore(name: str, out: Path, source: str | None = None) -> Path:
    """Writes the page of the dataset ``name`` (a built folder or ``ORG/NAME[@REVISION]``) to ``out``; returns ``out``."""
    from d2c_pack.publish.verify import locate

    write_page(from_location(locate(name), source), out)
    return out


def write_explore_page(package: Package, folder: Path) -> None:
    """``build --explore``: writes ``folder/assets/explore.html`` of the package being written, every thumbnail from its source."""
    write_page(from_package(package), folder / EXPLORE_PAGE)


def write_page(explorable: Explorable, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(explorable), encoding="utf-8")


def from_location(location: Location, source: str | None) -> Explorable:
    """A built folder or Hub revision: its manifest, ``scores`` config and selected rows; rejected images from ``source``."""
    from d2c_pack.publish.verify import read_manifest

    manifest, present = read_manifest(location), location.files()
    shards = _shards(present, "scores")
    if not shards:
        raise UserError(f"{location.name} has no 'scores' config (built with --no-with-scores): nothing to explore")
    parts, class_names = [], None
    for shard in shards:
        with location.open(shard) as file:
            parquet = pq.ParquetFile(file)
            class_names = class_names or datasets.Features.from_arrow_schema(parquet.schema_arrow)["label"].names
            parts.append(parquet.read(columns=SCORE_COLUMNS))
    scores = _score_columns(pa.concat_tables(parts))
    recipe, selection = manifest["recipe"], manifest["selection"]
    strides = selection.get("interval_strides")
    settings = settings_rows(
        source=f"{manifest['source']['name']} (split {manifest['source']['split']})",
        scorer=manifest["models"].get("scorer", {}).get("name", recipe["scorer"]),
        recipe=recipe, interval=selection["interval"], strides=tuple(strides) if strides else None,
        per_class=selection["per_class_budget"], rows=selection["rows"], scored=len(scores.labels),
    )  # fmt: skip
    settings.append(("built by", f"d2c-pack {manifest['version']}"))
    rejected = None
    if source is not None:
        opened = _open_build_source(source, recipe)
        rejected = source_reader(opened, scores.ids, unreadable=len(manifest["unreadable"]))
    return Explorable(page_title(recipe, manifest["source"]["name"]), class_names, scores, settings, _subset_reader(location, _shards(present, "data"), scores.ids), rejected)


def from_package(package: Package) -> Explorable:
    """The package ``build`` is writing: every image, selected or not, read from its source by index."""
    scores, selection = package.scores, package.selection
    selected = np.zeros(len(scores), dtype=bool)
    selected[selection.positions] = True
    columns = ScoreColumns(scores.labels, scores.scores, selection.ranks, selected, pa.array(scores.source_ids, pa.string()))
    settings = settings_rows(
        source=f"{shown_name(package.source.spec)} (split {package.recipe['split']})",
        scorer=package.models.get("scorer", {}).get("name", package.recipe["scorer"]),
        recipe=package.recipe, interval=selection.interval, strides=selection.stride_range(), per_class=selection.per_class,
        rows=len(selection.positions), scored=len(scores),
    )  # fmt: skip
    settings.append(("built by", f"d2c-pack {__version__}"))
    reader = _indexed_reader(package.source, scores.indices)
    return Explorable(page_title(package.recipe, shown_name(package.source.spec)), package.source.class_names, columns, settings, reader, reader)


def page_title(recipe: dict, source_name: str) -> str:
    """The subset's name: the same for a folder, its Hub copy and the page built into it (``source_name``: as the manifest shows it)."""
    return f"{recipe.get('repo_id') or source_name} (D2C, {recipe['budget']}, {recipe['selector']})"


def settings_rows(
    *, source: str, scorer: str, recipe: dict, interval: int | None, strides: tuple[int, int] | None, per_class: list[int], rows: int, scored: int
) -> list[tuple[str, str]]:
    """The page's "how it was built" table: what was actually used, automatic choices resolved."""
    budgets = [m for m in per_class if m > 0] or [0]
    selector = recipe["selector"]
    if interval:
        selector += f", stride k = {interval}"
        if strides and strides[0] < interval:
            selector += f" (strides used {strides[0]}–{strides[1]}: classes shorter than (m−1)·k)"
    low, high = min(budgets), max(budgets)
    return [
        ("source", source),
        ("scorer", scorer),
        ("selector", selector),
        ("budget", f"{recipe['budget']} → {low if low == high else f'{low}–{high}'} per class"),
        ("rows", f"{rows:,} selected of {scored:,} scored"),
    ]


def render_page(explorable: Explorable) -> str:
    """The page's HTML: the template with the data as one JSON document, every ``<`` escaped so no name can end its script."""
    classes = list(_class_records(explorable))
    data = {
        "title": explorable.title,
        "thumbnail": THUMBNAIL_SIZE,
        "rejectedThumbnails": explorable.rejected_images is not None,
        "classes": classes,
    }
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    template = (resources.files("d2c_pack") / "cards" / TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
    return environment.from_string(template).render(
        title=explorable.title,
        settings=explorable.settings,
        classes=[(index, record["name"], record["n"]) for index, record in enumerate(classes)],
        label_space=len(explorable.class_names),
        rejected_thumbnails=explorable.rejected_images is not None,
        selected_thumbnails=SELECTED_THUMBNAILS,
        data=Markup(text),
        version=__version__,
    )


def _class_records(explorable: Explorable) -> Iterator[dict]:
    """One JSON record per class with images: its summary, its selected images and its rejected samples."""
    scores = explorable.scores
    order = np.lexsort((scores.ranks, scores.labels))  # by class, then easiest first
    counts = np.bincount(scores.labels, minlength=len(explorable.class_names))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    classes = {int(label): order[bounds[label] : bounds[label + 1]] for label in np.flatnonzero(counts)}
    spread = [members[scores.selected[members]][_spread(int(scores.selected[members].sum()), SELECTED_THUMBNAILS)] for members in classes.values()]
    samples = {label: _rejected_samples(members[~scores.selected[members]]) for label, members in classes.items()}
    shown_selected = np.concatenate([np.zeros(0, int), *spread])
    shown_rejected = np.array([position for picks in samples.values() for position in picks], dtype=int)
    if explorable.rejected_images is explorable.selected_images:  # one pass over the source (a streamed one is read in order)
        thumbnails = _thumbnails(explorable.selected_images, np.concatenate([shown_selected, shown_rejected]), "shown")
    else:
        thumbnails = _thumbnails(explorable.selected_images, shown_selected, "selected")
        if explorable.rejected_images is not None:
            thumbnails |= _thumbnails(explorable.rejected_images, shown_rejected, "rejected")
    for label, members in classes.items():
        values = scores.difficulty[members].astype(np.float64)
        low, high = float(values[0]), float(values[-1])
        histogram, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high if high > low else low + 1))
        picks = samples[label]
        yield {
            "name": explorable.class_names[label],
            "n": len(members),
            "lo": _number(low),
            "hi": _number(high),
            "hist": histogram.tolist(),
            "curve": [_number(v) for v in values[_spread(len(values), CURVE_POINTS)]],
            "sel": _image_records(scores, members[scores.selected[members]], thumbnails),
            "rej": [record + [group] for record, group in zip(_image_records(scores, np.array(list(picks), int), thumbnails), picks.values())],
        }


def _rejected_samples(rejected: np.ndarray) -> dict[int, str]:
    """The rejected images shown (easiest, median, hardest of the class's rejected ones, by rank): position → group."""
    if not len(rejected):
        return {}
    ends = (len(rejected) - 1, (len(rejected) - 1) // 2, 0)
    picks = {int(rejected[end]): group for end, group in zip(ends, reversed(REJECTED_GROUPS))}  # a short class: the easier name wins
    return dict(sorted(picks.items(), key=lambda item: REJECTED_GROUPS.index(item[1])))


def _spread(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` positions of ``range(count)``, evenly spread and including both ends."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int)) if count else np.zeros(0, int)


def _image_records(scores: ScoreColumns, positions: np.ndarray, thumbnails: dict[int, str]) -> list[list]:
    """[rank, score, source id, thumbnail data URI or ""] of each image at ``positions``."""
    ids = scores.ids.take(pa.array(positions, pa.int64())).to_pylist()
    return [
        [int(scores.ranks[p]), _number(scores.difficulty[p]), source_id, thumbnails.get(int(p), "")] for p, source_id in zip(positions.tolist(), ids)
    ]


def _number(value: float) -> float:
    """Six significant digits: enough to tell scores apart, few bytes, and the same text on every machine."""
    return float(f"{float(value):.6g}")


def _thumbnails(reader: ImageReader, positions: np.ndarray, what: str) -> dict[int, str]:
    """Data URIs of the images at ``positions``, read and shrunk one at a time (memory: one image, whatever the count)."""
    wanted = np.unique(positions)
    thumbnails: dict[int, str] = {}
    with progress_bar(f"thumbnails of {what} images", len(wanted)) as advance:
        for position, data in reader(wanted):
            if (uri := thumbnail_uri(data)) is not None:
                thumbnails[int(position)] = uri
            advance(1)
    if missing := len(wanted) - len(thumbnails):
        logger.warning("%d of %d %s images could not be read: shown by score only", missing, len(wanted), what)
    return thumbnails


def thumbnail_uri(data: bytes) -> str | None:
    """A ``THUMBNAIL_SIZE`` square WebP data URI of encoded image bytes (centre crop), or None if they do not decode."""
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG: decode at a reduced scale, far faster
        image = ImageOps.fit(image.convert("RGB"), (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BICUBIC)
    except _DECODE_ERRORS:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _score_columns(table: pa.Table) -> ScoreColumns:
    return ScoreColumns(
        labels=table["label"].to_numpy(),
        difficulty=table["difficulty"].to_numpy(),
        ranks=table["difficulty_rank"].to_numpy(),
        selected=table["selected"].to_numpy(),
        ids=table["source_id"].combine_chunks(),
    )


def _shards(present: Iterable[str], folder: str) -> list[str]:
    return sorted(path for path in present if path.startswith(f"{folder}/") and path.endswith(".parquet"))


def _subset_reader(location: Location, shards: list[str], ids: pa.Array) -> ImageReader:
    """Reads selected images from the default config's shards by source id, one parquet row group at a time."""

    def read(positions: np.ndarray) -> Iterator[tuple[int, bytes]]:
        wanted = ids.take(pa.array(positions, pa.int64()))
        position_of = dict(zip(wanted.to_pylist(), positions.tolist()))
        for shard in shards:
            with location.open(shard) as file:
                parquet = pq.ParquetFile(file)
                rows = pc.indices_nonzero(pc.is_in(parquet.read(columns=["source_id"])["source_id"], value_set=wanted)).to_numpy().astype(np.int64)
                starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
                for group in np.unique(np.searchsorted(starts, rows, side="right") - 1):
                    table = parquet.read_row_group(int(group), columns=["source_id", "image"])
                    local = rows[(rows >= starts[group]) & (rows < starts[group + 1])] - starts[group]
                    for source_id, image in zip(*(table[c].take(local).to_pylist() for c in ("source_id", "image"))):
                        if image and image.get("bytes"):
                            yield position_of[source_id], image["bytes"]

    return read


def _open_build_source(spec: str, recipe: dict) -> ImageSource:
    """The source as the build opened it (split, columns; its revision when it is the same spec), with random access."""
    source = open_source(
        spec, split=recipe["split"], image_column=recipe["image_column"], label_column=recipe["label_column"],
        id_column=recipe["id_column"], revision=recipe["revision"] if spec == recipe["source"] else None,
    )  # fmt: skip
    if not source.random_access:
        raise UserError(f"{spec} has no random access; give a local copy as --source")
    return source


def source_reader(source: ImageSource, ids: pa.Array, unreadable: int) -> ImageReader:
    """Reads images of the scores table from the source, checking each image's id.

    The scores table lists the readable images in source-index order, so row r is source index
    r + o with o, the number of unreadable images before it, between 0 and ``unreadable`` and
    never decreasing along the rows: a scan that costs one read per image plus one per
    unreadable image. An image whose id is not where it should be (another source) is skipped.
    """

    def read(positions: np.ndarray) -> Iterator[tuple[int, bytes]]:
        offset = 0
        for position in np.sort(positions).tolist():
            expected = ids[position].as_py()
            for trial in range(offset, unreadable + 1):
                if position + trial >= len(source):
                    break
                record = source.get(position + trial)
                if record is not None and record.source_id == expected:
                    offset = trial
                    yield position, record.data
                    break

    return read


def _indexed_reader(source: ImageSource, indices: np.ndarray) -> ImageReader:
    """Reads images of the scores table by their known source index, in one ascending pass."""

    def read(positions: np.ndarray) -> Iterator[tuple[int, bytes]]:
        position_of = dict(zip(indices[positions].tolist(), positions.tolist()))
        for record in source.iter_records(sorted(position_of)):
            yield position_of[record.index], record.data

    return read
