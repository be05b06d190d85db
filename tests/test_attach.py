"""Attach: every column has the declared shape and the value a direct computation gives, is cached, and runs under torchrun."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_tiny_dinov2, make_tiny_vae, one_and_two_processes

from d2c_pack.attach.text import TextEncoder, class_prompts, encode_class_prompts
from d2c_pack.attach.visual import VisualEncoder
from d2c_pack.core.arrays import array_feature, feature_shape
from d2c_pack.models.latents import load_latent_space
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.selection.selectors import kcenter_select
from d2c_pack.sources.image_source import open_source
from d2c_pack.sources.preprocess import center_crop_adm


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_images: Path, tiny_scorer: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"images": tiny_images, "scorer": tiny_scorer, "visual": make_tiny_dinov2(root / "dinov2"), "vae": make_tiny_vae(root / "vae")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models) -> Path:
    """``config``'s build (3 per class, every column attached) from an empty work folder: read it, never change it.
    Its ``work`` holds the scores and the attached columns' caches; ``work_copy`` gives a test its own copy."""
    root = tmp_path_factory.mktemp("built")
    build(config(root, models))
    return root


def work_copy(built: Path, tmp_path: Path) -> Path:
    """``tmp_path / "work"``: a copy of the module build's work folder, as that build left it."""
    return Path(shutil.copytree(built / "work", tmp_path / "work"))


def config(tmp_path: Path, models: dict[str, Path], **overrides) -> BuildConfig:
    settings = dict(
        source=str(models["images"]), scorer=str(models["scorer"]), resolution=16, timesteps=2, batch_size=8, chunk_size=8,
        workers=0, device="cpu", work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="3/class", interval="2",
        text_encoder="demo:minilm", visual_encoder=str(models["visual"]), vae=str(models["vae"]), attach_batch_size=4,
    )  # fmt: skip
    return BuildConfig(**(settings | overrides))


def crop_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(center_crop_adm(image, 16))).permute(2, 0, 1)[None]  # (1, 3, R, R) uint8


def test_columns_have_declared_shapes_and_direct_values(built: Path, models) -> None:
    loaded = datasets.load_dataset(str(built / "out"), split="train")
    assert loaded.num_rows == 9
    declared = {
        "text_embedding": array_feature((16, 384), "float16"), "text_mask": array_feature((16,), "int8"),
        "visual_tokens": array_feature((49, 32), "float16"), "visual_cls": array_feature((32,), "float32"),
        "latent": array_feature((8, 8, 8), "float16"),  # mean ‖ std at R/2 for this tiny VAE
    }  # fmt: skip
    assert {name: loaded.features[name] for name in declared} == declared
    stored = {name: loaded.data.schema.field(name).type for name in declared}  # what the parquet holds: nested fixed-size lists
    assert stored["text_mask"] == pa.list_(pa.int8(), 16) and stored["visual_cls"] == pa.list_(pa.float32(), 32)
    assert stored["text_embedding"] == pa.list_(pa.list_(pa.float16(), 384), 16) and stored["visual_tokens"] == pa.list_(pa.list_(pa.float16(), 32), 49)
    # The torch format gives the declared shapes; datasets' TorchFormatter upcasts floats to float32 and integers to int64.
    subset = loaded.with_format("torch")
    assert {name: tuple(subset[0][name].shape) for name in declared} == {name: feature_shape(feature) for name, feature in declared.items()}

    source = open_source(str(models["images"]))
    ids = {record.source_id: record for record in source.iter_records()}
    text = TextEncoder("demo:minilm")
    prompts, encoding = class_prompts(source.class_names), encode_class_prompts(text, source.class_names)
    visual = VisualEncoder(str(models["visual"]), 16)
    vae = load_latent_space(str(models["vae"]))
    names = subset.with_format(None).select_columns(["source_id", "caption"])
    for row, meta in zip(subset, names):
        record, label = ids[meta["source_id"]], int(row["label"])
        assert meta["caption"] == prompts[label]
        assert torch.equal(row["text_embedding"], torch.from_numpy(encoding.embedding[label]).float())
        assert torch.equal(row["text_mask"], torch.from_numpy(encoding.mask[label]).long())
        tokens, cls = visual(crop_tensor(record.image))
        torch.testing.assert_close(row["visual_tokens"], tokens[0].float(), rtol=1e-3, atol=1e-3)  # float16, batched apart
        torch.testing.assert_close(row["visual_cls"], cls[0], rtol=1e-5, atol=1e-5)
        moments = vae.posterior(crop_tensor(record.image).float() / 127.5 - 1)[0].half()
        torch.testing.assert_close(row["latent"], moments.float(), rtol=1e-3, atol=1e-3)


def chunk_stamps(work: Path, group: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (work / "attach" / group).glob("*/chunks/*.parquet")}


def test_attachments_are_cached_per_image_across_selections(tmp_path: Path, built: Path, models) -> None:
    work = work_copy(built, tmp_path)  # what the module's build, from an empty work folder, attached
    before = {group: chunk_stamps(work, group) for group in ("visual", "latent")}
    assert all(before.values()) and not (work / "attach" / "caption").exists()  # class prompts need no per-image cache
    build(config(tmp_path, models, out=str(tmp_path / "same")))
    assert {group: chunk_stamps(work, group) for group in before} == before  # nothing recomputed
    build(config(tmp_path, models, out=str(tmp_path / "more"), budget="5/class"))
    rows = pq.read_table(next((work / "attach" / "visual").glob("*")) / "chunks", columns=["source_index"]).num_rows
    assert rows == 15  # the 9 images attached before plus the 6 new ones, each once


def test_kcenter_and_herding_select_on_visual_cls(tmp_path: Path, built: Path, models) -> None:
    work_copy(built, tmp_path)  # the scores, and the visual columns of 9 of the 36 images
    out = build(config(tmp_path, models, selector="kcenter", text_encoder="none", vae="none"))
    manifest = json.loads((out / "d2c/manifest.json").read_text())
    assert manifest["inputs"]["selection_features"] == "visual_cls"
    source = open_source(str(models["images"]))
    records = list(source.iter_records())
    encoder = VisualEncoder(str(models["visual"]), 16)
    cls = torch.cat([encoder(crop_tensor(r.image))[1] for r in records]).numpy()
    expected = kcenter_select(cls, np.array([r.label for r in records]), 3)
    chosen = datasets.load_dataset(str(out), split="train")["source_id"]
    assert sorted(chosen) == sorted(records[i].source_id for i in expected)
    assert set(datasets.load_dataset(str(out), split="train").column_names) == {
        "image", "label", "source_id", "difficulty", "difficulty_rank", "visual_tokens", "visual_cls",
    }  # fmt: skip


def test_captioner_captions_each_image(tmp_path: Path, built: Path, models) -> None:
    from test_attach_text import tiny_vit_gpt2, word_tokenizer

    work_copy(built, tmp_path)  # the scores
    captioner = tmp_path / "captioner"
    tiny_vit_gpt2(captioner)
    out = build(config(tmp_path, models, captioner=str(captioner), text_encoder="demo:minilm", visual_encoder="none", vae="none"))
    subset = datasets.load_dataset(str(out), split="train")
    encoder = TextEncoder("demo:minilm")
    encoding = encoder.encode(subset["caption"])
    np.testing.assert_allclose(np.stack(subset.with_format("numpy")["text_embedding"]), encoding.embedding.astype(np.float32), atol=2e-3)
    assert all(caption and set(caption.split()) <= set(word_tokenizer().get_vocab()) for caption in subset["caption"])


def test_torchrun_build_equals_single_process(tmp_path: Path, models) -> None:
    args = [
        "build", "--source", str(models["images"]), "--scorer", str(models["scorer"]), "--resolution", "16", "--timesteps", "2",
        "--chunk-size", "8", "--workers", "0", "--device", "cpu", "--budget", "3/class", "--text-encoder", "demo:minilm",
        "--visual-encoder", str(models["visual"]), "--vae", str(models["vae"]),
    ]  # fmt: skip
    one_and_two_processes(args, ["--out", str(tmp_path / "one"), "--work", str(tmp_path / "w1")], ["--out", str(tmp_path / "two"), "--work", str(tmp_path / "w2")])
    digests = [{p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()} for root in (tmp_path / "one", tmp_path / "two")]
    assert digests[0] == digests[1]
    chunks = [sorted(p.name for p in (tmp_path / work / "attach" / "visual").glob("*/chunks/*.parquet")) for work in ("w1", "w2")]
    assert chunks[0] == chunks[1] and len(chunks[1]) >= 2  # the same chunks, dealt round-robin: both ranks wrote some
