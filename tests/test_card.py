"""The dataset card: what it says about the subset, that `d2c-pack card` edits it without breaking the seal, and that no
published file names a local path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import hub_server
import pyarrow.parquet as pq
import pytest
import tomllib
import yaml
from conftest import build_config, make_image_folder, make_official_scorer
from datasets.info import DatasetInfo, DatasetInfosDict
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from d2c_pack.cli import app
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.build import build
from d2c_pack.publish.card import card_data, grid_text, selection_text, training_hint, update_card
from d2c_pack.publish.contents import hub_dataset_id
from d2c_pack.publish.hub import push
from d2c_pack.publish.settings import PushConfig
from d2c_pack.publish.verify import LocalFolder, locate, verify

hub = hub_server.hub
ROOT = Path(__file__).resolve().parents[1]
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # https://www.apache.org/licenses/LICENSE-2.0.txt


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build from a local folder and a local scorer, with no text column and the explore page."""
    root = tmp_path_factory.mktemp("card")
    images, scorer = make_image_folder(root / "images"), make_official_scorer(root / "scorer")
    return build(build_config(root, images, scorer, text_encoder="none", explore=True))


@pytest.fixture
def folder(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "copy"))


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def card_command(*args: str) -> int:
    result = CliRunner().invoke(app, ["card", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code


def test_no_published_file_names_a_local_path(built: Path) -> None:
    root = str(built.parent)  # the source folder and the scorer file lie under it
    for path in (p for p in built.rglob("*") if p.is_file()):
        assert root.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":  # compressed pages: look at the values
            table = pq.read_table(path)
            text = json.dumps(table.drop_columns([c for c in ("image",) if c in table.column_names]).to_pylist(), default=str)
            assert root not in text and root not in str(table.schema.metadata), path
    card = DatasetCard.load(built / "README.md")
    assert "source_datasets" not in card.data.to_dict()  # a local source has no Hub id
    assert "the local source `images`" in card.text and "--source …/images --scorer …/SiT-tiny-16.pt" in card.text
    recipe = yaml.safe_load((built / "d2c/recipe.yaml").read_text())
    assert recipe["source"] is None and recipe["scorer"] is None


def test_source_datasets_is_the_hub_id_of_a_hub_source(built: Path, tmp_path: Path) -> None:
    assert hub_dataset_id("hf:ILSVRC/imagenet-1k") == "ILSVRC/imagenet-1k"
    assert hub_dataset_id("demo:digits") is None and hub_dataset_id(str(tmp_path)) is None and hub_dataset_id(f"hf:{tmp_path}") is None
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    manifest["recipe"]["source"] = "hf:ILSVRC/imagenet-1k"
    data = card_data(manifest, DatasetInfosDict.from_dataset_card_data(DatasetCard.load(built / "README.md").data))
    assert data.source_datasets == ["ILSVRC/imagenet-1k"]


def test_task_categories_follow_the_columns(built: Path) -> None:
    assert DatasetCard.load(built / "README.md").data.task_categories == ["unconditional-image-generation"]  # --text-encoder none
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(built / "README.md").data)
    text = datasets.Features(infos["default"].features | {"text_embedding": datasets.List(datasets.List(datasets.Value("float16")))})
    infos["default"] = DatasetInfo(features=text)
    assert card_data(manifest, infos).task_categories == ["text-to-image", "unconditional-image-generation"]


def test_card_command_changes_the_licence_and_keeps_the_folder_verifiable(folder: Path) -> None:
    assert card_command(str(folder), "--license", "cc-by-4.0", "--description", "Made for a *test*.", "--pretty-name", "Tiny") == 0
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.pretty_name == "Tiny"
    assert "# Tiny\n\nMade for a *test*.\n" in card.text
    assert verify(LocalFolder(folder)) == []
    recipe = yaml.safe_load((folder / "d2c/recipe.yaml").read_text())
    assert (recipe["license"], recipe["description"], recipe["pretty_name"]) == ("cc-by-4.0", "Made for a *test*.", "Tiny")
    assert json.loads((folder / "d2c/manifest.json").read_text())["recipe"] == recipe
    before = digests(folder)
    assert card_command(str(folder), "--description", "") == 0  # "": back to none; the other settings stay
    assert "Made for a" not in (folder / "README.md").read_text() and DatasetCard.load(folder / "README.md").data.license == "cc-by-4.0"
    assert {path for path in before if before[path] != digests(folder)[path]} == {"README.md", "d2c/recipe.yaml", "d2c/manifest.json"}


def test_a_hand_edit_fails_verify_and_the_card_command_repairs_it(folder: Path) -> None:
    original = (folder / "README.md").read_bytes()
    (folder / "README.md").write_text((folder / "README.md").read_text().replace("license: unknown", "license: mit"))
    (problem,) = verify(LocalFolder(folder))
    assert problem.startswith("README.md: size") and "`d2c-pack card DIR`" in problem
    update_card(folder, license="mit")
    assert verify(LocalFolder(folder)) == [] and DatasetCard.load(folder / "README.md").data.license == "mit"
    update_card(folder, license="")  # back to automatic: the built card again
    assert (folder / "README.md").read_bytes() == original


def test_rendering_again_without_changes_keeps_every_byte(built: Path, folder: Path) -> None:
    assert card_command(str(folder)) == 0
    assert digests(folder) == digests(built)
    assert not list(folder.glob(".*"))  # no temporary file left


def test_the_card_command_refuses_a_folder_that_fails_verification(folder: Path) -> None:
    (folder / "assets" / "samples.png").unlink()
    with pytest.raises(UserError, match="assets/samples.png: listed in the manifest but missing"):
        update_card(folder, license="mit")


def test_push_accepts_a_folder_whose_card_was_changed(hub: hub_server.HubServer, folder: Path) -> None:
    (folder / "README.md").write_text((folder / "README.md").read_text().replace("license: unknown", "license: cc-by-4.0"))
    with pytest.raises(UserError, match="fails verification .*`d2c-pack card DIR`"):
        push(PushConfig(repo_id="tester/card", source_dir=str(folder), tag="v1.0"))  # a hand edit
    update_card(folder, license="cc-by-4.0")
    push(PushConfig(repo_id="tester/card", source_dir=str(folder), tag="v1.0"))
    pushed = locate("tester/card@v1.0")
    assert verify(pushed) == [] and DatasetCard(pushed.read_text("README.md")).data.license == "cc-by-4.0"


def test_the_licence_imagenet_gates_the_card(folder: Path) -> None:
    update_card(folder, license="imagenet")
    data = DatasetCard.load(folder / "README.md").data
    assert (data.license, data.license_name) == ("other", "imagenet") and "ImageNet terms of access" in data.extra_gated_prompt


def test_the_figure_text_says_where_each_selector_can_pick(built: Path) -> None:
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    # Interval k = 2 with 4 per class over 15, 9 and 12 readable images: ranks 0–6 of each, 7/15 … 7/9 of the ranking.
    assert manifest["selection"]["reach"] == [pytest.approx(7 / 15), pytest.approx(7 / 9)]
    text = selection_text(manifest)
    assert "the easiest 47–78% of each class's ranking, and the hardest 22–53% is never picked" in text
    assert "spread over the range" not in DatasetCard.load(built / "README.md").text
    manifest["selection"]["reach"] = [0.75, 0.75]  # D2C's auto k = 0.75 · n/m
    assert "the easiest 75%" in selection_text(manifest) and "hardest 25% is never picked" in selection_text(manifest)
    for selector, words in (("min", "easiest"), ("max", "hardest"), ("medium", "median"), ("random", "random"), ("kcenter", "scorer's pooled tokens")):
        manifest["recipe"]["selector"], manifest["inputs"]["selection_features"] = selector, "scorer"
        assert words in selection_text(manifest)


def test_the_grid_text_counts_the_selected_images(built: Path) -> None:
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    assert "every selected image (4 per class) of all 3 classes" in DatasetCard.load(built / "README.md").text
    manifest["selection"]["per_class_rows"] = [18, 18, 18]
    assert grid_text(manifest).startswith("The grid shows 8 of the 18 selected images per class")
    manifest["source"]["class_images"] = [40] * 1000
    manifest["selection"]["per_class_rows"] = [18] * 1000
    assert "for 10 of the 1000 classes" in grid_text(manifest)


def test_the_training_hint_fits_the_subset(built: Path) -> None:
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(built / "README.md").data)
    # 12 rows of 16-px pixels, no text or visual column: a tiny model, pixel space, neither loss term.
    assert training_hint(manifest, infos) == "d2c-pack train --data me/tiny-d2c@v1.0 --model SiT-T/2 --vae none --no-text --no-align --out RUN"
    manifest["recipe"]["resolution"], manifest["selection"]["rows"] = 32, 180  # the demo's digits
    assert "--model SiT-T/4 --vae none" in training_hint(manifest, infos)
    features = datasets.Features(
        infos["default"].features
        | {name: datasets.List(datasets.List(datasets.Value("float16"), length=384), length=16) for name in ("text_embedding", "visual_tokens")}
        | {"latent": datasets.List(datasets.List(datasets.List(datasets.Value("float16"), length=32), length=32), length=8)}
    )  # fmt: skip
    manifest["recipe"]["resolution"], manifest["selection"]["rows"] = 256, 10_000  # the paper's ImageNet subset
    assert training_hint(manifest, DatasetInfosDict(default=DatasetInfo(features=features))).endswith("--model SiT-XL/2 --out RUN")


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


def test_a_rebuild_with_another_licence_changes_only_the_card(built: Path, folder: Path) -> None:
    root = built.parent
    config = build_config(root, root / "images", root / "scorer" / "SiT-tiny-16.pt", text_encoder="none", explore=True, out=str(folder), license="mit")
    assert build(config) == folder  # no --overwrite needed: the data is the same
    assert DatasetCard.load(folder / "README.md").data.license == "mit" and verify(LocalFolder(folder)) == []
    changed = {path for path, digest in digests(folder).items() if digests(built)[path] != digest}
    assert changed == {"README.md", "d2c/recipe.yaml", "d2c/manifest.json"}
