"""ImageNet in every layout: the official label index, unique class names, ids and scores that agree across layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import build_config, encode, make_official_scorer, noise_image
from typer.testing import CliRunner

from d2c_pack.cli import app
from d2c_pack.core.errors import SourceError
from d2c_pack.pipeline.build import build, describe_build
from d2c_pack.selection.budget import parse_budget
from d2c_pack.selection.score import read_scores, score_source
from d2c_pack.selection.selectors import auto_interval
from d2c_pack.selection.settings import ScoreConfig
from d2c_pack.sources import imagenet
from d2c_pack.sources.image_source import is_imagenet, open_source

# tench (0), crane the bird (134), Chihuahua (151), crane the machine (517), toilet tissue (999)
SYNSETS = {"n01440764": 0, "n02012849": 134, "n02085620": 151, "n03126707": 517, "n15075141": 999}
PER_CLASS = 3


def imagenet_files() -> list[tuple[str, str, bytes]]:
    """(synset, ImageNet file stem, JPEG bytes) of every test image, in the folder tree's order."""
    files = []
    for seed, synset in enumerate(sorted(SYNSETS)):
        for i in range(PER_CLASS):
            files.append((synset, f"{synset}_{1000 + i}", encode(noise_image((20 + i, 18), seed * 10 + i), "JPEG")))
    return files


def write_folder(root: Path) -> Path:
    for synset, stem, data in imagenet_files():
        (root / synset).mkdir(parents=True, exist_ok=True)
        (root / synset / f"{stem}.JPEG").write_bytes(data)
    return root


def write_parquet(path: Path, names: list[str], file_name, label) -> Path:
    """The images as one parquet file with the ``datasets`` features in its schema (what ``to_parquet`` writes)."""
    rows = {"image": [], "label": []}
    for synset, stem, data in imagenet_files():
        rows["image"].append({"bytes": data, "path": file_name(synset, stem)})
        rows["label"].append(label(synset))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def hub_names() -> list[str]:
    """ImageNet's names as a Hub copy may spell them: the lemmas, with one of the two "crane"s renamed (a ClassLabel holds no repeats)."""
    names = list(imagenet.lemmas())
    names[517] = "crane, construction crane"
    return names


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imagenet")
    folder = write_folder(root / "folder")
    # A parquet copy as `Dataset.to_parquet` makes it: unique names, file names as stored by `datasets`.
    parquet = write_parquet(root / "copy.parquet", list(imagenet.class_names()), lambda s, stem: f"{stem}.JPEG", SYNSETS.get)
    # A folder laid out like the Hub's ILSVRC/imagenet-1k: its spelling of the names, its file names (synset appended).
    hub = root / "hub"
    write_parquet(hub / "data" / "train-00000-of-00001.parquet", hub_names(), lambda s, stem: f"{stem}_{s}.JPEG", SYNSETS.get)
    # A copy labelled by WordNet id, in its own order (as some ImageNet subsets are).
    subset_names = sorted(SYNSETS, reverse=True)
    by_synset = write_parquet(root / "by-synset.parquet", subset_names, lambda s, stem: f"{stem}.JPEG", subset_names.index)
    return {"folder": folder, "parquet": parquet, "hub": hub, "by_synset": by_synset}


def test_synset_folders_get_the_official_index_and_the_whole_label_space(layouts: dict[str, Path]) -> None:
    source = open_source(str(layouts["folder"]))
    assert source.num_classes == 1000 and source.class_names == list(imagenet.class_names())
    assert source.class_names[151] == "Chihuahua" and source.imagenet_labels and is_imagenet(source)
    assert [c for c, size in enumerate(source.class_sizes) if size] == sorted(SYNSETS.values())
    assert sum(source.class_sizes) == len(source) == PER_CLASS * len(SYNSETS)
    records = list(source.iter_records())
    assert {r.source_id: r.label for r in records} == {stem: SYNSETS[synset] for synset, stem, _ in imagenet_files()}


def test_the_licence_follows_the_classes_never_the_name(layouts: dict[str, Path], tmp_path: Path) -> None:
    cats = tmp_path / "imagenet-style-cats"
    for index, name in enumerate(("cat", "dog")):
        (cats / name).mkdir(parents=True)
        (cats / name / "a.png").write_bytes(encode(noise_image((8, 8), index), "PNG"))
    assert not is_imagenet(open_source(str(cats)))
    assert is_imagenet(open_source(str(layouts["parquet"])))  # the 1,000 names, in a file named anything
    # WordNet ids that are not ImageNet-1k's classes (ImageNet-21k's), as folders or as ClassLabel names.
    scans = tmp_path / "scans"
    for index, synset in enumerate(("n00004475", "n00005787")):
        (scans / synset).mkdir(parents=True)
        (scans / synset / "a.png").write_bytes(encode(noise_image((8, 8), index), "PNG"))
    assert is_imagenet(open_source(str(scans)))
    rows = {"image": [{"bytes": encode(noise_image((8, 8), 0), "PNG"), "path": None}], "label": [1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["n00004475", "n00005787"])})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "plants.parquet"))
    assert is_imagenet(open_source(str(tmp_path / "plants.parquet")))


def test_repeated_imagenet_names_are_told_apart_by_wordnet_id() -> None:
    names = imagenet.class_names()
    assert len(set(names)) == 1000
    assert (names[134], names[517]) == ("crane (n02012849)", "crane (n03126707)")
    assert names[0] == "tench, Tinca tinca" and names[638] == "maillot" and names[639] == "maillot, tank suit"
    datasets.ClassLabel(names=list(names))  # what packaging declares


@pytest.mark.parametrize("layout, streaming", [("parquet", False), ("hub", False), ("hub", True), ("by_synset", False)])
def test_every_layout_gives_the_folder_trees_labels_and_ids(layouts: dict[str, Path], layout: str, streaming: bool) -> None:
    folder = open_source(str(layouts["folder"]))
    spec = f"hf:{layouts[layout]}" if layout == "hub" else str(layouts[layout])
    other = open_source(spec, streaming=streaming)
    assert other.class_names == folder.class_names and other.class_sizes == folder.class_sizes and other.imagenet_labels
    expected = {r.source_id: (r.label, r.data) for r in folder.iter_records()}
    assert {r.source_id: (r.label, r.data) for r in other.iter_records()} == expected


def test_every_layout_gives_the_same_scores(layouts: dict[str, Path], tmp_path: Path) -> None:
    scorer = make_official_scorer(tmp_path / "scorer", num_classes=1000)
    scored = {}
    for layout in ("folder", "parquet", "hub"):
        spec = f"hf:{layouts[layout]}" if layout == "hub" else str(layouts[layout])
        config = ScoreConfig(source=spec, scorer=str(scorer), resolution=16, timesteps=2, batch_size=4, workers=0, device="cpu", work=str(tmp_path / "work"))
        scores = read_scores(score_source(config))
        scored[layout] = dict(zip(scores.source_ids, zip(scores.labels.tolist(), scores.scores.tolist())))
    assert set(scored["folder"]) == {stem for _, stem, _ in imagenet_files()}
    for layout in ("parquet", "hub"):
        assert scored[layout].keys() == scored["folder"].keys()
        for source_id, (label, score) in scored["folder"].items():
            assert scored[layout][source_id][0] == label
            assert scored[layout][source_id][1] == pytest.approx(score, rel=1e-5)


def test_a_streamed_parquet_source_counts_labels_without_reading_the_images(layouts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.packaged_modules.parquet.parquet import Parquet

    read_columns = []
    original = Parquet._generate_tables

    def spy(self, *args, **kwargs):
        read_columns.append(self.config.columns)
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(Parquet, "_generate_tables", spy)
    source = open_source(f"hf:{layouts['hub']}", streaming=True)
    assert source.class_sizes[151] == PER_CLASS and len(source) == PER_CLASS * len(SYNSETS)
    assert read_columns and all(columns == ["label"] for columns in read_columns)


def test_a_copy_of_one_image_keeps_its_path_as_id(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder")
    (root / "n01440764" / "again").mkdir()
    (root / "n01440764" / "again" / "n01440764_1000.JPEG").write_bytes((root / "n01440764" / "n01440764_1000.JPEG").read_bytes())
    ids = [r.source_id for r in open_source(str(root)).iter_records()]
    assert len(set(ids)) == len(ids) and "n01440764/again/n01440764_1000.JPEG" in ids and "n01440764/n01440764_1000.JPEG" in ids


def test_budgets_and_the_automatic_interval_count_only_the_classes_present() -> None:
    sizes = [0] * 1000
    for label in SYNSETS.values():
        sizes[label] = 1300
    budgets = parse_budget("0.8%", sizes)
    assert [budgets[c] for c in SYNSETS.values()] == [10] * 5 and sum(budgets) == 50
    assert sum(parse_budget("52", sizes)) == 52 and parse_budget("52", sizes)[0] == 11 and parse_budget("52", sizes)[1] == 0
    assert auto_interval(sizes, parse_budget("10/class", sizes)) == 98


def test_an_imagenet_folder_with_both_cranes_builds_and_reports_what_it_did(layouts: dict[str, Path], tmp_path: Path) -> None:
    scorer = make_official_scorer(tmp_path / "scorer", num_classes=1000)
    out = build(build_config(tmp_path, layouts["folder"], scorer, budget="2/class", interval="5", text_encoder="none"))
    subset = datasets.load_dataset(str(out), split="train")
    assert subset.features["label"].names == list(imagenet.class_names())
    assert sorted(set(subset["label"])) == sorted(SYNSETS.values()) and len(subset) == 2 * len(SYNSETS)
    manifest = json.loads((out / "d2c/manifest.json").read_text())
    # Classes of 3 images cannot hold 2 picks 5 apart: the stride shrinks to (3-1)//(2-1) = 2, and says so.
    assert manifest["selection"]["interval"] == 5 and manifest["selection"]["interval_strides"] == [2, 2]
    card = (out / "README.md").read_text()
    assert "interval k = 5 (strides used 2–2" in card and "holds 5 of the 1000 classes" in card
    assert "995 of the 1000 classes have no image in the source" in describe_build(out)
    shown = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=200)
    assert shown.exit_code == 0 and "k = 5 (strides used 2–2: short classes)" in shown.output


def test_names_that_stay_ambiguous_fail_in_one_line_before_scoring(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    # "crane" (a folder) and n02012849 (the synset "crane") collide; the id that tells them apart names a third folder.
    for folder in ("crane", "crane (n02012849)", "n02012849"):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.png").write_bytes(encode(noise_image((8, 8), 0), "PNG"))
    with pytest.raises(SourceError, match="are both named 'crane \\(n02012849\\)'"):
        open_source(str(root))
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["-m", "d2c_pack", "build", "--source", str(root), "--scorer", str(make_official_scorer(tmp_path / "scorer")), "--out", str(out), "--work", str(work)]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert result.returncode == 2 and "class names must be unique" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists() and not list(tmp_path.glob(".out*")) and not (work / "scores").exists()


def test_class_lists_in_messages_quote_each_name() -> None:
    from d2c_pack.sources.image_source import quoted_names

    assert quoted_names(["tench, Tinca tinca", "goldfish"]) == "'tench, Tinca tinca', 'goldfish'"
    assert quoted_names([str(i) for i in range(12)], limit=2) == "'0', '1' and 10 more"


def test_image_ids_of_every_imagenet_file_name() -> None:
    assert imagenet.image_id("n01440764/n01440764_10026.JPEG") == "n01440764_10026"
    assert imagenet.image_id("n01440764_10026_n01440764.JPEG") == "n01440764_10026"
    assert imagenet.image_id("val/ILSVRC2012_val_00000001_n01751748.JPEG") == "ILSVRC2012_val_00000001"
    assert imagenet.image_id("n01440764/cat.jpg") is None
    assert np.array_equal(np.argsort(imagenet.synsets()), np.arange(1000))  # the official index is the sorted order
