"""`d2c-pack explore` and `build --explore`: the page of kept and rejected images per class, from a folder or a Hub revision."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import datasets
import hub_server
import numpy as np
import pyarrow as pa
import pytest
from conftest import make_image_folder, make_official_scorer, run_tiny_benchmark
from hub_server import HubServer
from PIL import Image
from typer.testing import CliRunner

from d2c_pack.cli import app
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.explore import Explorable, ScoreColumns, explore, render_page
from d2c_pack.publish.hub import push
from d2c_pack.publish.layout import EXPLORE_PAGE
from d2c_pack.publish.settings import SELECTED_THUMBNAILS, THUMBNAIL_SIZE, PushConfig
from d2c_pack.publish.verify import LocalFolder, verify

hub = hub_server.hub
ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if shutil.which(name)), None)
REPO = "tester/explore-d2c"


class PageParser(HTMLParser):
    """The class picker's options, the embedded JSON data and the element ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []  # src / href attributes
        self.data_text = ""
        self._in = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        self.ids.add(attributes.get("id"))
        self.links += [value for key, value in attrs if key in ("src", "href")]
        self._in = "option" if tag == "option" else "data" if attributes.get("id") == "d2c-data" else None
        if tag == "option":
            self.options.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "option":
            self.options[-1] += data
        elif self._in == "data":
            self.data_text += data


def parse(page: Path) -> tuple[PageParser, dict]:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser, json.loads(parser.data_text)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny subset built with --explore (3 classes, 4 per class; the source has one corrupt image) and its source folder."""
    root = tmp_path_factory.mktemp("explore")
    images, scorer = make_image_folder(root / "images"), make_official_scorer(root / "scorer")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        out = build(
            BuildConfig(
                source=str(images), scorer=str(scorer), resolution=16, timesteps=2, workers=0, device="cpu", work=str(root / "work"),
                out=str(root / "out"), budget="4/class", text_encoder="none", visual_encoder="none", vae="none", repo_id=REPO, explore=True,
            )
        )
    return out, images


def subset_ids(out: Path) -> dict[str, list[str]]:
    subset = datasets.load_dataset(str(out), split="train").remove_columns("image")
    names = subset.features["label"].names
    by_class: dict[str, list[str]] = {name: [] for name in names}
    for row in sorted(subset, key=lambda row: row["difficulty_rank"]):
        by_class[names[row["label"]]].append(row["source_id"])
    return by_class


def test_built_page_holds_every_class_and_exactly_the_subsets_selection(built) -> None:
    out, _ = built
    parser, data = parse(out / EXPLORE_PAGE)
    by_class = subset_ids(out)
    assert [option.rsplit(" (", 1)[0] for option in parser.options] == list(by_class) == [c["name"] for c in data["classes"]]
    assert {c["name"]: [image[2] for image in c["sel"]] for c in data["classes"]} == by_class
    scores = datasets.load_dataset(str(out), "scores", split="train")
    expected = {row["source_id"]: (row["difficulty_rank"], row["difficulty"]) for row in scores}
    for record in data["classes"]:
        assert record["n"] == sum(1 for row in scores if scores.features["label"].names[row["label"]] == record["name"])
        assert sum(record["hist"]) == record["n"]
        for rank, score, source_id, *_ in record["sel"] + record["rej"]:
            assert rank == expected[source_id][0] and score == pytest.approx(expected[source_id][1], rel=1e-5)
        assert [group for *_, group in record["rej"]] == ["easiest", "median", "hardest"]
        assert all(image[3] for image in record["sel"] + record["rej"])  # the build has the source: every thumbnail
    # The page is part of the dataset: hashed in the manifest, linked from the card.
    assert verify(LocalFolder(out)) == []
    assert EXPLORE_PAGE in json.loads((out / "d2c/manifest.json").read_text())["files"]
    assert f"]({EXPLORE_PAGE})" in (out / "README.md").read_text()


def test_thumbnails_are_small_webp_squares(built) -> None:
    parser, data = parse(built[0] / EXPLORE_PAGE)
    thumbnails = [image[3] for record in data["classes"] for image in record["sel"] + record["rej"]]
    for uri in thumbnails:
        head, payload = uri.split(",", 1)
        assert head == "data:image/webp;base64"
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert (image.format, image.size) == ("WEBP", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    # Self-contained: no script, style sheet or image to fetch.
    assert parser.links == [] and "url(" not in (built[0] / EXPLORE_PAGE).read_text()


def test_explore_of_the_folder_with_its_source_gives_the_built_page_byte_for_byte(built, tmp_path: Path) -> None:
    out, images = built
    page = explore(str(out), tmp_path / "page.html", source=str(images))
    # Row r of the scores is source index r or r + 1 here (bee/broken.jpg is unreadable): every rejected image is found by id.
    assert page.read_bytes() == (out / EXPLORE_PAGE).read_bytes()


def test_without_the_source_rejected_images_are_shown_by_score_and_the_page_says_so(built, tmp_path: Path) -> None:
    out, _ = built
    result = CliRunner().invoke(app, ["explore", str(out), "--out", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    parser, data = parse(tmp_path / "page.html")
    assert "no-source" in parser.ids and not data["rejectedThumbnails"]
    for record in data["classes"]:
        assert all(image[3] for image in record["sel"])  # the selected images are in the subset itself
        assert [image[3] for image in record["rej"]] == ["", "", ""]
    assert {c["name"]: [image[2] for image in c["sel"]] for c in data["classes"]} == subset_ids(out)


def test_help_states_what_the_page_holds_and_a_subset_without_scores_is_refused(built, tmp_path: Path) -> None:
    """What the page holds, not its measured size (which goes stale: benchmarks/RESULTS.md has it)."""
    help_text = " ".join(CliRunner().invoke(app, ["explore", "--help"], terminal_width=200).output.replace("│", " ").split())
    assert "12 selected and 3 rejected 64px WebP thumbnails per class" in help_text and " MB" not in help_text
    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    shutil.rmtree(copy / "scores")
    with pytest.raises(UserError, match="no 'scores' config"):
        explore(str(copy), tmp_path / "page.html")


def test_explore_reads_a_hub_revision(hub: HubServer, built, tmp_path: Path) -> None:
    out, images = built
    push(PushConfig(repo_id=REPO, source_dir=str(out), tag="v1.0"))
    page = explore(f"{REPO}@v1.0", tmp_path / "page.html", source=str(images))
    assert page.read_bytes() == (out / EXPLORE_PAGE).read_bytes()


def test_thumbnails_per_class_are_bounded_whatever_the_selection(tmp_path: Path) -> None:
    """A class with 300 of 1,000 images selected: every selected id listed, at most SELECTED_THUMBNAILS + 3 images read.
    Its name, markup that would end the data's script, is shown as text."""
    count, rng = 1000, np.random.default_rng(0)
    selected = np.zeros(count, bool)
    selected[::3][:300] = True
    read: list[int] = []

    def reader(positions: np.ndarray):
        read.extend(positions.tolist())
        yield from ((int(p), PNG) for p in positions)

    scores = ScoreColumns(np.zeros(count, int), rng.random(count).astype(np.float32), np.arange(count), selected, pa.array([f"i{i}" for i in range(count)]))
    name = "</script><!-- <b>only</b>"
    text = render_page(Explorable("t", [name], scores, [("source", "x")], reader, reader))
    assert len(read) == SELECTED_THUMBNAILS + 3
    parser = PageParser()
    parser.feed(text)
    record = json.loads(parser.data_text)["classes"][0]
    assert record["name"] == name and parser.options == [f"{name} (1000)"]
    assert len(record["sel"]) == 300 and sum(bool(image[3]) for image in record["sel"]) == SELECTED_THUMBNAILS


@pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_headless_chromium_without_console_messages(built, tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/explore_browser.py", str(built[0] / EXPLORE_PAGE), "--screenshot", str(tmp_path / "page.png")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "without console messages" in done.stdout
    assert Image.open(tmp_path / "page.png").size == (1280, 1000)


def test_benchmark_tiny_run_reports_size_time_and_memory(tmp_path: Path) -> None:
    (result,) = run_tiny_benchmark("explore_scale.py", tmp_path, timeout=300)["results"]
    assert (result["rows"], result["classes"]) == (3000, 3)
    assert result["thumbnails"] == 3 * (10 + 3)  # every selected image (10 ≤ 12) and 3 rejected ones per class
    assert 0 < result["page_bytes"] < 3 * 13 * 4000 + 100_000


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
