"""The dataset card, its figures, the manifest, `verify` and `inspect` on a local folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_config, encode, make_image_folder, make_official_scorer, noise_image
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard
from PIL import Image

from d2c_pack.cli import app
from d2c_pack.core.arrays import column_array
from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import weight_files_sha256
from d2c_pack.pipeline.build import build
from d2c_pack.publish import card as card_module
from d2c_pack.publish.verify import LocalFolder, verify


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("publish")
    return build(build_config(root, make_image_folder(root / "images"), make_official_scorer(root / "scorer")))


def test_card_metadata_round_trips_through_hub_and_datasets_readers(built: Path) -> None:
    card = DatasetCard.load(built / "README.md")
    assert card.data.license == "unknown" and "extra_gated_prompt" not in card.data.to_dict()
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}] and configs["default"]["default"]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert infos["default"].features == datasets.load_dataset(str(built), split="train").features
    assert infos["scores"].features == datasets.load_dataset(str(built), "scores", split="train").features
    text = card.text
    for section in ("## How it was built", "## Class balance", "## Where the selection fell", "## Columns", "## Usage", "## Limitations", "## Citation"):
        assert section in text
    assert "![Difficulty per class" in text and "(assets/difficulty.png)" in text and "(assets/samples.png)" in text
    assert 'load_dataset("me/tiny-d2c", split="train")' in text and "column_array(subset, \"text_embedding\")" in text
    assert "| ant | 4 |" in text and "arXiv:2507.05914" in text


def test_figures_are_written_for_evenly_spread_classes(built: Path) -> None:
    for name in ("difficulty.png", "samples.png"):
        with Image.open(built / "assets" / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert card_module.plotted_classes(1000) == sorted(set(card_module.plotted_classes(1000)))
    assert len(card_module.plotted_classes(1000)) == 10 and card_module.plotted_classes(3) == [0, 1, 2]


def test_imagenet_derived_builds_carry_the_licence_and_gate(tmp_path: Path) -> None:
    images = tmp_path / "imagenet"
    for seed, wnid in enumerate(("n01440764", "n01443537")):
        (images / wnid).mkdir(parents=True)
        for i in range(3):
            (images / wnid / f"{i}.png").write_bytes(encode(noise_image((20, 20), seed * 10 + i), "PNG"))
    out = build(build_config(tmp_path, images, make_official_scorer(tmp_path / "scorer", num_classes=1000), budget="2/class", text_encoder="none"))
    data = DatasetCard.load(out / "README.md").data
    assert (data.license, data.license_name, data.license_link) == ("other", "imagenet", "https://image-net.org/download.php")
    assert "ImageNet terms of access" in data.extra_gated_prompt and "non-commercial research" in data.extra_gated_prompt
    assert "gated by the ImageNet terms" in DatasetCard.load(out / "README.md").text


def test_manifest_names_every_model_with_weight_file_hashes(built: Path) -> None:
    manifest = json.loads((built / "d2c/manifest.json").read_text())
    scorer = manifest["models"]["scorer"]
    (name, digest), = scorer["files"].items()
    weights = built.parent / "scorer" / "SiT-tiny-16.pt"
    assert scorer["name"] == name == weights.name  # a local model by its file name alone: no local path is published
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["models"]["text_encoder"]["name"] == "demo:minilm" and "model.safetensors" in manifest["models"]["text_encoder"]["files"]
    assert manifest["source"]["images"] == 37 and manifest["seeds"] == {"noise_and_random_selection": 0}
    assert set(manifest["files"]) == {p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file()} - {"d2c/manifest.json"}


def test_a_model_whose_weights_cannot_be_hashed_is_an_error_not_an_empty_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="cannot hash the weights of 'someone/not-downloaded'.*hf download someone/not-downloaded"):
        weight_files_sha256("someone/not-downloaded")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="holds no .*safetensors"):
        weight_files_sha256(str(tmp_path / "no-weights"))
    assert weight_files_sha256("demo:digits-encoder").keys() == {"model.safetensors"}


def test_column_array_keeps_the_stored_dtype(built: Path) -> None:
    subset = datasets.load_dataset(str(built), split="train").select([3, 0, 7])
    embedding = column_array(subset, "text_embedding")
    assert embedding.dtype == np.float16 and embedding.shape == (3, 16, 384)
    np.testing.assert_array_equal(embedding.astype(np.float32), np.stack(subset.with_format("numpy")["text_embedding"]))
    assert column_array(subset, "text_mask").dtype == np.int8


@pytest.fixture
def copy_of(built: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(built, tmp_path / "copy"))


def test_verify_passes_on_a_built_folder(built: Path) -> None:
    assert verify(LocalFolder(built)) == []


def test_verify_names_altered_missing_and_extra_files(copy_of: Path) -> None:
    shard = copy_of / "data" / "train-00000-of-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    (copy_of / "assets" / "samples.png").unlink()
    (copy_of / "notes.txt").write_text("added")
    problems = verify(LocalFolder(copy_of))
    assert "data/train-00000-of-00001.parquet: sha256 differs from the manifest (altered or corrupted)" in problems
    assert "assets/samples.png: listed in the manifest but missing" in problems
    assert "notes.txt: not listed in the manifest" in problems


def test_verify_checks_parquet_schema_and_rows_against_the_card(copy_of: Path) -> None:
    shard = copy_of / "scores" / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 5).drop(["losses"]), shard)
    manifest_path = copy_of / "d2c/manifest.json"
    manifest = json.loads(manifest_path.read_text())  # as if the manifest had been rewritten to match
    manifest["files"]["scores/train-00000-of-00001.parquet"] = {"sha256": hashlib.sha256(shard.read_bytes()).hexdigest(), "size": shard.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    problems = verify(LocalFolder(copy_of))
    assert problems == [
        "scores/train-00000-of-00001.parquet: columns differ from the card's dataset_info for config 'scores'",
        "config 'scores': 5 rows in 1 shard(s), the card declares 36",  # the 36 readable images
    ]


def test_verify_and_inspect_commands(built: Path, copy_of: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    passed = runner.invoke(app, ["verify", str(built)])
    assert passed.exit_code == 0 and "match the manifest" in passed.output
    (copy_of / "README.md").write_text((copy_of / "README.md").read_text() + "edited\n")
    failed = runner.invoke(app, ["verify", str(copy_of)])
    assert failed.exit_code == 1 and "README.md: size" in failed.output
    shown = runner.invoke(app, ["inspect", str(built)])
    assert shown.exit_code == 0
    for expected in ("12", "3 (4–4 rows per class)", "text_embedding", "16 × 384", "float16", "interval, k ="):
        assert expected in shown.output
