"""`d2c-pack export`: REPA's preprocessed layout and torchvision's ImageFolder, read back by their own readers' logic."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import datasets
import hub_server
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import build_config, make_image_folder, make_official_scorer, make_tiny_vae
from hub_server import HubServer

import d2c_pack.publish.export as export_module
from d2c_pack import cli
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.build import build
from d2c_pack.publish.export import class_folders, export
from d2c_pack.publish.settings import ExportConfig
from d2c_pack.sources import imagenet
from d2c_pack.sources.preprocess import center_crop_adm

RESOLUTION = 16
hub = hub_server.hub  # the in-process Hub fixture


@pytest.fixture(scope="session")
def subsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 rows of 3 classes at R = 16, with a latent column (a tiny 2× VAE) and without one (the same scores, cached)."""
    root = tmp_path_factory.mktemp("export-subsets")
    images, scorer = make_image_folder(root / "images"), make_official_scorer(root / "scorer")
    settings = dict(text_encoder="none", visual_encoder="none")
    return {
        "latent": build(build_config(root, images, scorer, vae=str(make_tiny_vae(root / "vae")), out=str(root / "latent"), **settings)),
        "pixels": build(build_config(root, images, scorer, vae="none", out=str(root / "pixels"), **settings)),
    }


def subset_rows(folder: Path) -> datasets.Dataset:
    """The subset as `datasets` reads it (not through the exporter's reader)."""
    return datasets.load_dataset(str(folder), split="train")


def expected_crops(rows: datasets.Dataset) -> list[np.ndarray]:
    return [np.asarray(center_crop_adm(image, RESOLUTION)) for image in rows["image"]]  # (R, R, 3) uint8 each


class RepaCustomDataset:
    """REPA's ``dataset.CustomDataset`` (sihyun-yu/REPA, dataset.py), transcribed: file discovery, labels, and ``__getitem__`` (PIL path)."""

    def __init__(self, data_dir: Path):
        PIL.Image.init()
        supported_ext = PIL.Image.EXTENSION.keys() | {".npy"}
        self.images_dir = os.path.join(data_dir, "images")
        self.features_dir = os.path.join(data_dir, "vae-sd")
        self._image_fnames = {os.path.relpath(os.path.join(root, fname), start=self.images_dir) for root, _dirs, files in os.walk(self.images_dir) for fname in files}
        self.image_fnames = sorted(fname for fname in self._image_fnames if self._file_ext(fname) in supported_ext)
        self._feature_fnames = {os.path.relpath(os.path.join(root, fname), start=self.features_dir) for root, _dirs, files in os.walk(self.features_dir) for fname in files}
        self.feature_fnames = sorted(fname for fname in self._feature_fnames if self._file_ext(fname) in supported_ext)
        with open(os.path.join(self.features_dir, "dataset.json"), "rb") as f:
            labels = json.load(f)["labels"]
        labels = dict(labels)
        labels = [labels[fname.replace("\\", "/")] for fname in self.feature_fnames]
        labels = np.array(labels)
        self.labels = labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

    def _file_ext(self, fname: str) -> str:
        return os.path.splitext(fname)[1].lower()

    def __len__(self) -> int:
        assert len(self.image_fnames) == len(self.feature_fnames), "Number of feature files and label files should be same"
        return len(self.feature_fnames)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with open(os.path.join(self.images_dir, self.image_fnames[idx]), "rb") as f:
            image = np.array(PIL.Image.open(f))
            image = image.reshape(*image.shape[:2], -1).transpose(2, 0, 1)
        features = np.load(os.path.join(self.features_dir, self.feature_fnames[idx]))
        return torch.from_numpy(image), torch.from_numpy(features), torch.tensor(self.labels[idx])


def export_to(subset: Path | str, out: Path, layout: str, **overrides) -> Path:
    return export(ExportConfig(name=str(subset), format=layout, out=str(out), **overrides))


def test_repa_export_is_the_subset_pair_by_pair_through_repas_reader(subsets: dict[str, Path], tmp_path: Path) -> None:
    out = export_to(subsets["latent"], tmp_path / "repa", "repa")
    rows = subset_rows(subsets["latent"])
    dataset = RepaCustomDataset(out)
    assert len(dataset) == len(rows) == 12
    for index, (crop, latent, label) in enumerate(zip(expected_crops(rows), rows["latent"], rows["label"])):
        image, features, target = dataset[index]
        assert torch.equal(image, torch.from_numpy(crop.transpose(2, 0, 1).copy()))
        assert features.dtype == torch.float32 and torch.equal(features, torch.tensor(np.asarray(latent, dtype=np.float16)).float())  # (2C, h, w)
        assert int(target) == label
    # images/dataset.json as REPA's `convert` writes it: every image with its label, json.dumps' separators.
    listing = (out / "images" / "dataset.json").read_text()
    assert listing == json.dumps({"labels": [[f"00000/img{i:08d}.png", label] for i, label in enumerate(rows["label"])]})
    readme = (out / "README.md").read_text()
    manifest_sha256 = hashlib.sha256((subsets["latent"] / "d2c" / "manifest.json").read_bytes()).hexdigest()
    assert manifest_sha256 in readme and "train.py --data-dir" in readme and str(subsets["latent"]) in readme


def test_imagefolder_export_gives_torchvisions_imagefolder_the_subsets_labels(subsets: dict[str, Path], tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    out = export_to(subsets["pixels"], tmp_path / "folder", "imagefolder")
    rows = subset_rows(subsets["pixels"])
    folder = ImageFolder(str(out / "train"))
    names = rows.features["label"].names
    assert folder.classes == [f"{i}_{name}" for i, name in enumerate(names)] and list(folder.class_to_idx.values()) == [0, 1, 2]
    by_file = {Path(path).relative_to(out / "train").as_posix(): target for path, target in folder.samples}
    expected = {f"{label}_{names[label]}/{source_id.replace('/', '_').rsplit('.', 1)[0]}.png": label for source_id, label in zip(rows["source_id"], rows["label"])}
    assert by_file == expected  # every row, under its own label
    for (source_id, label), crop in zip(zip(rows["source_id"], rows["label"]), expected_crops(rows)):
        path = out / "train" / f"{label}_{names[label]}" / f"{source_id.replace('/', '_').rsplit('.', 1)[0]}.png"
        assert np.array_equal(np.asarray(folder.loader(str(path))), crop)
    assert "train.py" in (out / "README.md").read_text() and "--data-path" in (out / "README.md").read_text()


def test_class_folders_sort_in_label_order() -> None:
    assert class_folders(list(imagenet.class_names())) == list(imagenet.synsets())  # official ImageNet indices
    names = [f"class {c}/x" for c in "kjihgfedcba"]  # 11 names in reverse order, one with a path separator
    folders = class_folders(names)
    assert sorted(folders) == folders and folders[0] == "00_class k_x" and folders[10] == "10_class a_x"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["repa", "imagefolder"])
def test_interrupted_export_resumes_to_the_same_bytes(subsets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    whole = files_of(export_to(subsets["latent"], tmp_path / "whole" / "export", layout))
    real_write, calls = export_module._write_atomic, []

    def crash_on_the_eighth_file(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 8:  # dies while writing: the partial file is on disk, not renamed
            path.with_name(path.name + export_module.PARTIAL_SUFFIX).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(export_module, "_write_atomic", crash_on_the_eighth_file)
    out = tmp_path / "resumed" / "export"
    with pytest.raises(KeyboardInterrupt):
        export_to(subsets["latent"], out, layout)
    monkeypatch.setattr(export_module, "_write_atomic", real_write)
    finished = {p: p.stat().st_ino for p in out.rglob("*.png")}
    assert 0 < len(finished) < 12 and not (out / "README.md").exists()
    assert files_of(export_to(subsets["latent"], out, layout)) == whole  # no partial file left, same bytes
    assert all(p.stat().st_ino == inode for p, inode in finished.items())  # finished files were not written again


def test_non_empty_out_is_refused_without_overwrite(subsets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty .* pass --overwrite"):
        export_to(subsets["latent"], out, "repa")
    export_to(subsets["latent"], tmp_path / "repa", "repa")
    with pytest.raises(UserError, match="not empty"):  # another format into an existing export
        export_to(subsets["latent"], tmp_path / "repa", "imagefolder")
    replaced, reference = files_of(export_to(subsets["latent"], out, "repa", overwrite=True)), files_of(tmp_path / "repa")
    assert "notes.txt" not in replaced and replaced.keys() == reference.keys()
    assert all(replaced[name] == reference[name] for name in reference if name != "README.md")  # the README names its folder


def test_repa_without_a_latent_column_is_one_line_exit_2(subsets: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["d2c-pack", "export", str(subsets["pixels"]), "--format", "repa", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "no latent column" in err and "--format imagefolder" in err and not (tmp_path / "x").exists()


def test_a_hub_revision_exports_like_its_folder_and_names_its_commit(hub: HubServer, subsets: dict[str, Path], tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    HfApi().create_repo("tester/tiny", repo_type="dataset")
    commit = HfApi().upload_folder(repo_id="tester/tiny", repo_type="dataset", folder_path=str(subsets["latent"])).oid
    HfApi().create_tag("tester/tiny", tag="v1.0", repo_type="dataset")
    from_hub = files_of(export_to("tester/tiny@v1.0", tmp_path / "hub" / "export", "repa"))
    local = files_of(export_to(subsets["latent"], tmp_path / "local" / "export", "repa"))
    assert from_hub.keys() == local.keys() and all(from_hub[name] == local[name] for name in local if name != "README.md")
    assert f"the Hub dataset `tester/tiny@v1.0` (commit {commit})" in from_hub["README.md"].decode()
