"""`build` writes a Hub-layout folder that `load_dataset` reads back exactly as declared, atomically and reproducibly."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import CLASS_SIZES
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from d2c_pack import cli
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish import package
from d2c_pack.publish.package import row_features


@pytest.fixture
def inputs(tiny_images: Path, tiny_scorer: Path) -> tuple[Path, Path]:
    return tiny_images, tiny_scorer


def build_config(tmp_path: Path, inputs: tuple[Path, Path], **overrides) -> BuildConfig:
    folder, scorer = inputs
    settings = dict(
        source=str(folder), scorer=str(scorer), resolution=16, timesteps=4, batch_size=8, chunk_size=16,
        workers=0, device="cpu", work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="4/class", interval="2",
        text_encoder="none", visual_encoder="none", vae="none",
    )  # fmt: skip
    return BuildConfig(**(settings | overrides))


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_built_folder_loads_with_the_declared_features(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "assets/difficulty.png", "assets/samples.png", "d2c/manifest.json", "d2c/recipe.yaml", "data/train-00000-of-00001.parquet", "scores/train-00000-of-00001.parquet",
    ]  # fmt: skip
    subset = datasets.load_dataset(str(out), split="train")
    assert subset.features == row_features(sorted(CLASS_SIZES))
    assert subset.num_rows == 12
    images = {p.relative_to(inputs[0]).as_posix(): p.read_bytes() for p in inputs[0].rglob("*.*")}
    for row in subset.cast_column("image", datasets.Image(decode=False)):
        assert row["image"]["bytes"] == images[row["source_id"]]  # the source bytes, not re-encoded
    scores = datasets.load_dataset(str(out), "scores", split="train")
    assert scores.num_rows == sum(CLASS_SIZES.values())
    assert sum(scores["selected"]) == 12
    by_id = dict(zip(scores["source_id"], zip(scores["difficulty"], scores["difficulty_rank"])))
    for row in subset.remove_columns("image"):
        assert by_id[row["source_id"]] == (pytest.approx(row["difficulty"]), row["difficulty_rank"])
    # Interval sampling with k = 2 and 4 per class: ranks 0, 2, 4, 6 of every class.
    assert sorted(subset["difficulty_rank"]) == [0, 0, 0, 2, 2, 2, 4, 4, 4, 6, 6, 6]


def test_ranks_order_the_scores_within_each_class(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs))
    scores = datasets.load_dataset(str(out), "scores", split="train").to_pandas()
    for _, group in scores.groupby("label"):
        ordered = group.sort_values("difficulty_rank")
        assert ordered["difficulty_rank"].tolist() == list(range(len(group)))
        assert np.all(np.diff(ordered["difficulty"].to_numpy()) >= 0)


def test_card_metadata_declares_configs_and_features(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs))
    card = DatasetCard.load(out / "README.md")
    configs = {c["config_name"]: c for c in card.data.configs}
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert configs["scores"]["data_files"] == [{"split": "train", "path": "scores/train-*"}]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert infos["default"].features == row_features(sorted(CLASS_SIZES))
    assert infos["default"].splits["train"].num_examples == 12
    assert card.data.size_categories == ["n<1K"]
    assert "interval k = 2" in card.text and "4 per class" in card.text


def test_recipe_is_resolved_and_rebuilds_the_same_bytes(tmp_path: Path, inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build(build_config(tmp_path, inputs, interval="auto"))
    recipe = yaml.safe_load((first / "d2c/recipe.yaml").read_text())
    assert recipe["interval"] == "2"  # auto: round(0.75 · 12 / 4) = 2
    assert recipe["budget"] == "4/class"
    assert not {"out", "work", "device", "workers"} & set(recipe)
    assert recipe["source"] is None and recipe["scorer"] is None  # local paths are not published: a rebuild gives them again
    # The recipe is a valid --recipe: the command line rebuilds the same bytes elsewhere.
    args = ["build", "--recipe", str(first / "d2c/recipe.yaml"), "--source", str(inputs[0]), "--scorer", str(inputs[1])]
    args += ["--out", str(tmp_path / "again"), "--work", str(tmp_path / "w2"), "--workers", "0", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["d2c-pack", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert file_digests(first) == file_digests(tmp_path / "again")


def test_manifest_records_provenance_and_checksums(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs))
    manifest = json.loads((out / "d2c/manifest.json").read_text())
    assert manifest["inputs"]["scorer_sha256"] == hashlib.sha256(inputs[1].read_bytes()).hexdigest()
    assert manifest["inputs"]["scorer_prediction"] == "velocity"
    assert manifest["selection"]["per_class_rows"] == [4, 4, 4]
    assert manifest["unreadable"] == [{"source_id": "bee/broken.jpg", "reason": "cannot decode: not a recognised image format"}]
    listed = {k: v["sha256"] for k, v in manifest["files"].items()}
    assert listed == {k: v for k, v in file_digests(out).items() if k != "d2c/manifest.json"}


def test_rerun_keeps_a_finished_folder_and_refuses_other_settings(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert build(build_config(tmp_path, inputs)) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    with pytest.raises(UserError, match="--overwrite"):
        build(build_config(tmp_path, inputs, budget="2/class"))
    build(build_config(tmp_path, inputs, budget="2/class", overwrite=True))
    assert datasets.load_dataset(str(out), split="train").num_rows == 6


def test_a_crash_while_packaging_leaves_no_folder(tmp_path: Path, inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    original = package.write_split

    def crash_on_scores(tables, features, root, folder, max_shard_size, **kwargs):
        if folder == package.SCORES_DIR:
            raise RuntimeError("simulated crash")
        return original(tables, features, root, folder, max_shard_size, **kwargs)

    monkeypatch.setattr(package, "write_split", crash_on_scores)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(build_config(tmp_path, inputs))
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert datasets.load_dataset(str(build(build_config(tmp_path, inputs))), split="train").num_rows == 12


def test_shards_respect_the_size_limit(tmp_path: Path, inputs) -> None:
    out = build(build_config(tmp_path, inputs, budget="20/class", max_shard_size="4KB", with_scores=False))
    shards = sorted((out / "data").glob("*.parquet"))
    assert len(shards) > 1 and shards[0].name == f"train-00000-of-{len(shards):05d}.parquet"
    assert not (out / "scores").exists()
    assert datasets.load_dataset(str(out), split="train").num_rows == sum(CLASS_SIZES.values())


def greedy_kcenter(x: np.ndarray, m: int) -> list[int]:
    """k-center greedy written out on all pairwise distances: start nearest the mean, then the point farthest from the chosen."""
    pairwise = ((x[:, None] - x[None]) ** 2).sum(-1)
    chosen = [int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))]
    while len(chosen) < m:
        nearest = pairwise[:, chosen].min(1)
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
    return chosen


def greedy_herding(x: np.ndarray, m: int) -> list[int]:
    """Herding written out: add the point whose inclusion brings the chosen mean closest to the class mean."""
    chosen: list[int] = []
    while len(chosen) < m:
        gaps = [np.inf if i in chosen else float(((x[chosen + [i]].mean(0) - x.mean(0)) ** 2).sum()) for i in range(len(x))]
        chosen.append(int(np.argmin(gaps)))
    return chosen


def selected_ids(out: Path) -> set[str]:
    return set(datasets.load_dataset(str(out), split="train")["source_id"])


@pytest.mark.parametrize("selector", ["interval", "min", "max", "medium", "kcenter", "herding"])
def test_every_selector_picks_by_its_rule(tmp_path: Path, inputs, selector: str) -> None:
    """Each class of the built subset holds exactly the images the selector's rule picks, worked out here from the scores."""
    m, k = 3, 2
    out = build(build_config(tmp_path, inputs, selector=selector, budget=f"{m}/class", interval=str(k)))
    scores = datasets.load_dataset(str(out), "scores", split="train").to_pandas()
    scores_file = next((tmp_path / "work").rglob("scores.parquet"))  # the cache, with the scorer's pooled features
    cached = pq.read_table(scores_file, columns=["source_id", "error", "feature"]).filter(pc.is_null(pc.field("error")))
    features = dict(zip(cached["source_id"].to_pylist(), np.array(cached["feature"].to_pylist(), dtype=np.float16).astype(np.float32)))
    expected = set()
    for _, group in scores.groupby("label"):
        ids = group.sort_values(["difficulty", "source_id"])["source_id"].tolist()  # easiest first
        n, members = len(ids), set(ids)
        by_position = [s for s in cached["source_id"].to_pylist() if s in members]  # the order the selector sees them in
        x = np.stack([features[s] for s in by_position])
        rule = {
            "interval": lambda: [ids[i] for i in range(0, m * k, k)],
            "min": lambda: ids[:m],
            "max": lambda: ids[n - m :],
            "medium": lambda: ids[(n - m) // 2 : (n - m) // 2 + m],
            "kcenter": lambda: [by_position[i] for i in greedy_kcenter(x, m)],
            "herding": lambda: [by_position[i] for i in greedy_herding(x, m)],
        }
        expected |= set(rule[selector]())
    assert selected_ids(out) == expected
    assert set(scores[scores["selected"]]["source_id"]) == expected


def test_random_selection_is_reproducible_and_follows_the_seed(tmp_path: Path, inputs) -> None:
    first = selected_ids(build(build_config(tmp_path, inputs, selector="random", budget="3/class", seed=1)))
    again = selected_ids(build(build_config(tmp_path, inputs, selector="random", budget="3/class", seed=1, out=str(tmp_path / "again"))))
    other = selected_ids(build(build_config(tmp_path, inputs, selector="random", budget="3/class", seed=2, out=str(tmp_path / "other"))))
    assert len(first) == 9 and first == again and other != first


def test_existing_foreign_folder_is_not_touched(tmp_path: Path, inputs) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a d2c-pack dataset folder"):
        build(build_config(tmp_path, inputs))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("field", "value", "message"), [("selector", "best", "unknown selector"), ("interval", "0", "--interval")])
def test_bad_build_settings_are_refused(tmp_path: Path, inputs, field: str, value: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_config(tmp_path, inputs, **{field: value})
