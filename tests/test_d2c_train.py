"""The D2C trainer: DC-Embedding, alignment loss, training from condensed datasets, --init, and DDP equivalence."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import hub_server
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_repa_checkpoint, make_tiny_dinov2, make_tiny_vae, one_and_two_processes
from host_sync import HostSyncs
from hub_server import HubServer
from safetensors.torch import load_file

from d2c_pack.core.errors import UserError
from d2c_pack.models.checkpoint import load_backbone, load_class_text, read_state_dict
from d2c_pack.models.d2c import D2CSiT, DCEmbedding
from d2c_pack.models.dit import BACKBONES
from d2c_pack.models.latents import VaeSpace
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.shards import ParquetShards, ShardRows
from d2c_pack.training.data import SubsetRows, collate_rows
from d2c_pack.training.loop import alignment_loss, model_inputs, prepare_data, resize_token_grid, step_randomness, train
from d2c_pack.training.memory import SubsetArrays
from d2c_pack.training.settings import TrainConfig

hub = hub_server.hub


@pytest.fixture(scope="module")
def subsets(tmp_path_factory: pytest.TempPathFactory, tiny_images: Path, tiny_scorer: Path) -> dict[str, Path]:
    """Two condensed datasets of 12 images at R = 16: pixels with text + visual columns, and with a latent column."""
    root = tmp_path_factory.mktemp("subsets")
    settings = dict(
        source=str(tiny_images), scorer=str(tiny_scorer), resolution=16, timesteps=2, workers=0, device="cpu", work=str(root / "work"),
        budget="4/class", text_encoder="demo:minilm", visual_encoder=str(make_tiny_dinov2(root / "dinov2")),
    )  # fmt: skip
    return {
        "pixels": build(BuildConfig(**settings, vae="none", out=str(root / "pixels"))),
        "latent": build(BuildConfig(**settings, vae=str(make_tiny_vae(root / "vae")), out=str(root / "latent"))),
    }


DEFAULT = object()  # a setting ``config`` leaves at TrainConfig's default


def config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    """A tiny run: SiT-T/4 at 16 px, 4 steps of 8, and a projector 64 wide (REPA's 2048, the default, is 2.5 times the
    backbone's weights and triples the cost of a step; ``test_projector_width...`` trains it)."""
    settings = dict(
        data=str(data), out=str(tmp_path / "run"), model="SiT-T/4", resolution=16, vae="none", learn_sigma=False, steps=4,
        batch_size=8, lr=1e-3, ema_decay=0.9, workers=0, log_every=1, ckpt_every=2, device="cpu", projector_dim=64,
    )  # fmt: skip
    return TrainConfig(**{name: value for name, value in (settings | overrides).items() if value is not DEFAULT})


def test_dc_embedding_shapes_and_null_text() -> None:
    torch.manual_seed(0)
    embedder = DCEmbedding(text_dim=8, hidden_size=16, text_length=4, dropout_prob=0.1).eval()
    torch.nn.init.normal_(embedder.mlp[3].weight)  # the zero init would hide the MLP branch
    text, mask = torch.randn(3, 4, 8), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    out = embedder(text, mask)
    assert out.shape == (3, 16)
    garbage = text.clone()
    garbage[0, 2:] = 99.0  # masked tokens do not count
    assert torch.allclose(embedder(garbage, mask), out)
    dropped = embedder(text, mask, drop=torch.tensor([True, False, True]))
    null = embedder(torch.zeros(1, 4, 8), torch.zeros(1, 4, dtype=torch.long))
    assert torch.allclose(dropped[0], null[0]) and torch.allclose(dropped[2], null[0]) and torch.allclose(dropped[1], out[1])


def test_model_condition_uses_text_and_class_independently() -> None:
    model = D2CSiT(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=3, learn_sigma=False, text_dim=8, text_length=4, visual_dim=5).eval()
    torch.nn.init.normal_(model.text_embedder.mlp[3].weight)
    t, y = torch.rand(2), torch.tensor([0, 2])
    text, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.long)
    c = model.embed_condition(t, y, text, mask)
    expected = model.t_embedder(t) + model.y_embedder.embedding_table(y) + model.text_embedder(text, mask)
    assert torch.allclose(c, expected)
    null_both = model.embed_condition(t, y, text, mask, drop_class=torch.tensor([True, True]), drop_text=torch.tensor([True, True]))
    null = model.y_embedder.embedding_table(torch.tensor([3, 3])) + model.text_embedder(torch.zeros_like(text), torch.zeros_like(mask))
    assert torch.allclose(null_both, model.t_embedder(t) + null)
    out, projection = model(torch.randn(2, 3, 8, 8), t, y, text, mask, return_projection=True)
    assert out.shape == (2, 3, 8, 8) and projection.shape == (2, 4, 5)
    assert model.encoder_depth == 1  # ⌈2 / 3⌉


def test_alignment_loss_is_minus_mean_cosine() -> None:
    projection = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2 tokens, 2)
    targets = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])
    assert alignment_loss(projection, targets).item() == pytest.approx(-0.5)  # cosines 1 and 0
    constant = torch.ones(2, 49, 6) * torch.arange(6.0)
    resized = resize_token_grid(constant, 8)
    assert resized.shape == (2, 64, 6) and torch.allclose(resized, torch.ones(2, 64, 6) * torch.arange(6.0))
    assert torch.equal(resize_token_grid(constant, 7), constant)


def test_loss_falls_with_every_component_on(tmp_path: Path, subsets) -> None:
    run = train(config(tmp_path, subsets["pixels"], steps=40, batch_size=12, lr=2e-3, ckpt_every=40))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[:10], lines[-10:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "velocity_loss") < 0.7 * mean(first, "velocity_loss")
    assert mean(last, "align_loss") < lines[0]["align_loss"] - 0.3  # the projection learns the visual tokens (cos ↑)
    model, backbone = load_backbone(run)
    assert (backbone.text_dim, backbone.visual_dim, backbone.encoder_depth, backbone.projector_dim) == (384, 32, 2, 64)
    assert [layer.out_features for layer in model.projector if hasattr(layer, "out_features")] == [64, 64, 32]
    class_text = load_class_text(run)
    assert class_text.embedding.shape == (3, 16, 384) and class_text.mask.dtype == torch.int8


@pytest.mark.parametrize(("setting", "width"), [(DEFAULT, 2048), (48, 48)], ids=["default-repa", "set"])
def test_projector_width_is_a_setting_kept_with_the_weights(tmp_path: Path, subsets, setting, width: int) -> None:
    run = train(config(tmp_path, subsets["pixels"], steps=1, projector_dim=setting))
    model, backbone = load_backbone(run)
    assert backbone.projector_dim == width
    assert [layer.out_features for layer in model.projector if hasattr(layer, "out_features")] == [width, width, 32]


def test_latent_column_trains_without_a_vae(tmp_path: Path, subsets) -> None:
    run = train(config(tmp_path, subsets["latent"], model="SiT-T/2", steps=2, vae="stabilityai/never-downloaded"))
    _, backbone = load_backbone(run)
    assert (backbone.in_channels, backbone.input_size, backbone.image_size) == (4, 8, 16)
    assert backbone.vae.endswith("vae")  # the subset's VAE, recorded for decoding samples


def test_a_subset_trains_at_its_own_resolution(tmp_path: Path, subsets) -> None:
    data = prepare_data(config(tmp_path, subsets["pixels"], resolution=None), torch.device("cpu"))
    assert data.image_size == 16 and data.dataset[0]["image"].shape == (3, 16, 16)  # not the default 256
    with pytest.raises(UserError, match="built at resolution 16; leave out --resolution 32"):
        prepare_data(config(tmp_path, subsets["pixels"], resolution=32), torch.device("cpu"))


def test_latents_are_shifted_and_scaled_by_the_vaes_own_factors(tmp_path: Path, tiny_images: Path, tiny_scorer: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    subset = build(BuildConfig(
        source=str(tiny_images), scorer=str(tiny_scorer), resolution=16,
        timesteps=1, workers=0, device="cpu", work=str(tmp_path / "work"), budget="2/class", text_encoder="none", visual_encoder="none",
        vae=str(tmp_path / "vae"), out=str(tmp_path / "subset"),
    ))  # fmt: skip
    inputs = json.loads((subset / "d2c/manifest.json").read_text())["inputs"]
    assert (inputs["latent_scaling_factor"], inputs["latent_shift_factor"]) == (0.5, pytest.approx(0.1))
    data = prepare_data(config(tmp_path, subset, model="SiT-T/2", text=False, align=False, resolution=None), torch.device("cpu"))
    moments = torch.randn(2, 8, 8, 8)
    x1 = model_inputs(SimpleNamespace(data=data), {"latent": moments}, torch.zeros(2, 4, 8, 8))
    torch.testing.assert_close(x1, (moments[:, :4] - 0.1) * 0.5)
    space = VaeSpace(vae)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(space.encode(images), (vae.encode(images).latent_dist.mean - 0.1) * 0.5)
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(space.decode(z), vae.decode(z / 0.5 + 0.1).sample)


def test_class_and_text_drop_together_as_sit_and_repa(tmp_path: Path) -> None:
    def dropout(text_dropout: float) -> dict[str, torch.Tensor]:
        run = SimpleNamespace(config=TrainConfig(source="demo:digits", out=str(tmp_path), text=False, align=False, text_dropout=text_dropout),
                              step=3, data=SimpleNamespace(in_channels=3, input_size=2))  # fmt: skip
        return step_randomness(run, 100_000)

    joint = dropout(0.0)
    assert torch.equal(joint["drop_text"], joint["drop_class"])  # the null condition CFG samples with: 10% of samples
    assert joint["drop_class"].float().mean().item() == pytest.approx(0.1, abs=0.005)
    extra = dropout(0.2)
    assert torch.equal(extra["drop_class"], joint["drop_class"]) and bool((extra["drop_text"] >= extra["drop_class"]).all())
    assert extra["drop_text"].float().mean().item() == pytest.approx(0.1 + 0.9 * 0.2, abs=0.005)


def test_the_ema_decays_at_its_rate_from_the_first_step(tmp_path: Path, subsets) -> None:
    run = train(config(tmp_path, subsets["pixels"], steps=2, ckpt_every=1, ema_decay=0.9))
    first, second = (run.parent / "checkpoints" / f"{step:07d}" for step in (1, 2))
    ema_1, ema_2, model_2 = load_file(str(first / "ema.safetensors")), load_file(str(second / "ema.safetensors")), load_file(str(second / "model.safetensors"))
    for name, value in ema_2.items():  # SiT/REPA: ema ← 0.9·ema + 0.1·model at every step, no warm-up
        torch.testing.assert_close(value, 0.9 * ema_1[name] + 0.1 * model_2[name])


def test_switches_leave_components_out(tmp_path: Path, subsets) -> None:
    run = train(config(tmp_path, subsets["pixels"], text=False, align=False, class_cond=False, steps=1))
    model, backbone = load_backbone(run)
    assert model.text_embedder is None and model.projector is None and not backbone.class_cond
    with pytest.raises(UserError, match="--no-align"):
        train(config(tmp_path / "other", make_subset_without_visual(tmp_path, subsets)))


def make_subset_without_visual(tmp_path: Path, subsets) -> Path:
    import datasets

    folder = tmp_path / "no-visual"
    datasets.load_dataset(str(subsets["pixels"]), split="train").remove_columns(["visual_tokens", "visual_cls"]).save_to_disk(str(folder))
    return folder


def test_init_from_an_official_state_dict(tmp_path: Path, subsets) -> None:
    official = BACKBONES["SiT-T/4"](input_size=16, in_channels=3, num_classes=3, learn_sigma=False)
    with torch.no_grad():
        for parameter in official.parameters():
            parameter.normal_(0, 0.05)
    path = tmp_path / "SiT-T-4-16.pt"
    torch.save(official.state_dict(), path)
    run = train(config(tmp_path, subsets["pixels"], init=str(path), steps=1, lr=0.0))
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert report["loaded"] == sorted(official.state_dict()) and report["ignored"] == []
    assert {key.split(".")[0] for key in report["new"]} == {"text_embedder", "projector"}
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "0000001" / "model.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in official.state_dict().items())  # lr 0: still the file's weights
    assert load_backbone(run)[0].text_embedder is not None
    wrong = BACKBONES["SiT-T/4"](input_size=16, in_channels=3, num_classes=7, learn_sigma=False)
    torch.save(wrong.state_dict(), tmp_path / "SiT-wrong.pt")
    with pytest.raises(UserError, match="differ in shape"):
        train(config(tmp_path / "w", subsets["pixels"], init=str(tmp_path / "SiT-wrong.pt"), steps=1))


def test_init_from_a_repa_checkpoint_leaves_nothing_new(tmp_path: Path, subsets) -> None:
    """REPA's SiT aligns block encoder_depth through one projector and has no text: with alignment on and --no-text every
    tensor comes from its EMA weights (converted to SiT's time convention, as sampling loads them)."""
    path = tmp_path / "0000003.pt"
    weights = make_repa_checkpoint(path, depth=6, hidden=128, z_dim=32, projector_dim=64, encoder_depth=2)  # SiT-T/2 on 4×4×4 latents, 32-wide DINOv2 tokens
    train(config(tmp_path, subsets["latent"], model="SiT-T/2", text=False, projector_dim=64, init=str(path), steps=1, lr=0.0))
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert report["new"] == [] and report["ignored"] == [] and len(report["loaded"]) == len(weights["ema"])
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "0000001" / "model.safetensors"))
    assert trained.keys() == read_state_dict(path).keys() and all(torch.equal(trained[k], v) for k, v in read_state_dict(path).items())


def test_two_processes_train_like_one(tmp_path: Path, subsets) -> None:
    args = [
        "train", "--data", str(subsets["pixels"]), "--model", "SiT-T/4", "--resolution", "16", "--vae", "none", "--no-learn-sigma",
        "--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--log-every", "1", "--ckpt-every", "3", "--device", "cpu",
        "--projector-dim", "64",
    ]  # fmt: skip
    one_and_two_processes(args, ["--out", str(tmp_path / "one")], ["--out", str(tmp_path / "two")])
    one = load_file(str(tmp_path / "one" / "checkpoints" / "0000003" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "0000003" / "model.safetensors"))
    # Zero-initialised layers (adaLN, the text MLP's last) take their first Adam steps from gradients near Adam's eps, where
    # m/√v amplifies the rounding of the all-reduce: a few of their weights may differ by a fraction of one step (lr = 1e-3).
    # A wrong shard or dropout draw changes the gradients' signs and moves many weights by whole steps.
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-4)
    assert any(not torch.equal(one[k], v) for k, v in load_file(str(tmp_path / "one" / "checkpoints" / "0000003" / "ema.safetensors")).items())


def assert_same_weights(run_a: Path, run_b: Path, step: int) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(str(run / "checkpoints" / f"{step:07d}" / name)) for run in (run_a, run_b))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_build_trains_in_place_like_through_datasets(tmp_path: Path, subsets) -> None:
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    train(config(tmp_path / "in-place", subsets["pixels"], steps=3, ckpt_every=3, workers=2, data_memory_gb=0))
    assert not cache.exists() or not any(cache.rglob("*"))  # no Arrow copy of the shards anywhere
    copy = tmp_path / "saved"  # the same rows as a save_to_disk folder: the datasets path
    datasets.load_dataset(str(subsets["pixels"]), split="train").save_to_disk(str(copy))
    train(config(tmp_path / "datasets", copy, steps=3, ckpt_every=3))
    assert_same_weights(tmp_path / "in-place/run", tmp_path / "datasets/run", 3)
    class_text = [load_class_text(tmp_path / run / "run/model") for run in ("in-place", "datasets")]
    assert torch.equal(class_text[0].embedding, class_text[1].embedding) and torch.equal(class_text[0].mask, class_text[1].mask)


def test_shards_read_both_array_encodings_by_row_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = {"label": rng.integers(0, 3, 11), "tokens": rng.standard_normal((11, 5, 4)).astype(np.float16), "mask": rng.integers(0, 2, (11, 4)).astype(np.int8)}
    encodings = {
        "extension": datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"]), "tokens": datasets.Array2D((5, 4), "float16"), "mask": datasets.List(datasets.Value("int8"), length=4)}),
        "nested": datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"]), "tokens": datasets.List(datasets.List(datasets.Value("float16"), length=4), length=5), "mask": datasets.List(datasets.Value("int8"), length=4)}),
    }  # fmt: skip
    order = [10, 0, 3, 3, 7, 1, 9]  # across shards and row groups, one row twice
    for name, features in encodings.items():
        dataset = datasets.Dataset.from_dict(values, features=features)
        paths = []
        for index, (start, stop) in enumerate([(0, 6), (6, 11)]):  # two shards of row groups of 4 rows
            paths.append(tmp_path / f"{name}-{index}.parquet")
            pq.write_table(dataset.select(range(start, stop)).data.table, paths[-1], row_group_size=4)
        shards = ParquetShards(paths)
        assert len(shards) == 11 and pq.ParquetFile(paths[0]).num_row_groups == 2
        in_place = collate_rows(ShardRows(shards, ["tokens", "mask"], 16).__getitems__(order))
        reference = collate_rows([SubsetRows(dataset, ["tokens", "mask"], 16)[i] for i in order])
        assert in_place["tokens"].shape == (7, 5, 4)
        for key, tensor in reference.items():
            assert in_place[key].dtype == tensor.dtype and torch.equal(in_place[key], tensor), (name, key)
        assert (shards.column("label") == values["label"]).all()


def test_a_hub_build_trains_from_its_snapshot_in_place(hub: HubServer, tmp_path: Path, subsets) -> None:
    from huggingface_hub import HfApi, constants

    HfApi().create_repo("tester/tiny", repo_type="dataset")
    HfApi().upload_folder(repo_id="tester/tiny", repo_type="dataset", folder_path=str(subsets["latent"]))
    train(config(tmp_path, "tester/tiny", model="SiT-T/2", steps=2, vae="stabilityai/never-downloaded"))
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    assert not cache.exists() or not any(cache.rglob("*"))
    downloaded = [p.relative_to(p.parents[1]).as_posix() for p in Path(constants.HF_HUB_CACHE).rglob("*.parquet")]
    assert sorted(downloaded) == sorted(p.relative_to(subsets["latent"]).as_posix() for p in (subsets["latent"] / "data").glob("*.parquet"))
    train(config(tmp_path / "local", subsets["latent"], model="SiT-T/2", steps=2, vae="stabilityai/never-downloaded"))
    assert_same_weights(tmp_path / "run", tmp_path / "local/run", 2)


@pytest.mark.parametrize("kind", ["pixels", "latent"])
def test_columns_in_memory_train_like_rows_read_in_place_and_a_subset_over_budget_is_read_in_place(tmp_path: Path, subsets, kind: str, capsys) -> None:
    flags = {"model": "SiT-T/2", "vae": "stabilityai/never-downloaded"} if kind == "latent" else {}
    train(config(tmp_path / "memory", subsets[kind], steps=3, ckpt_every=3, **flags))
    assert capsys.readouterr().err.count("training data: 12 rows") == 1
    train(config(tmp_path / "in-place", subsets[kind], steps=3, ckpt_every=3, data_memory_gb=0, **flags))
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training data:")]
    assert len(said) == 1 and said[0].endswith("exceed the memory budget of 0 B (--data-memory-gb): read in place"), said
    assert_same_weights(tmp_path / "memory/run", tmp_path / "in-place/run", 3)
    in_memory = prepare_data(config(tmp_path, subsets[kind], **flags), torch.device("cpu"), announce=False).dataset
    in_place = prepare_data(config(tmp_path, subsets[kind], data_memory_gb=0, **flags), torch.device("cpu"), announce=False).dataset
    assert isinstance(in_memory, SubsetArrays) and isinstance(in_place, ShardRows)
    stored = {name: column.dtype for name, column in in_memory.columns.items()}
    assert stored["text_embedding"] == torch.float16 and stored["text_mask"] == torch.int8 and stored.get("latent", torch.float16) == torch.float16
    assert stored.get("image", torch.uint8) == torch.uint8  # ADM crops as uint8: a quarter of the decoded float32 pixels
    order = [5, 0, 11, 5]
    gathered, rows = in_memory.gather(order), collate_rows(in_place.__getitems__(order))
    assert gathered.keys() == rows.keys() - {"positions"}
    for name, values in gathered.items():
        assert values.dtype == rows[name].dtype and torch.equal(values, rows[name]), name


def test_training_steps_read_the_device_only_at_log_steps(tmp_path: Path, subsets) -> None:
    """20 steps, 2 log steps and a time-based checkpoint check: a handful of host syncs, none per step."""
    with HostSyncs() as syncs:
        train(config(tmp_path, subsets["pixels"], steps=20, log_every=10, ckpt_every=20, ckpt_every_seconds=3600))
    assert syncs.count <= 10, syncs.calls
    assert sum(n for call, n in syncs.calls.items() if call.endswith(" tolist")) == 2, syncs.calls  # one read per log step


def test_a_log_step_records_the_mean_of_its_steps(tmp_path: Path, subsets) -> None:
    every = [json.loads(line) for line in (train(config(tmp_path / "a", subsets["pixels"], log_every=1)).parent / "metrics.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (train(config(tmp_path / "b", subsets["pixels"], log_every=2)).parent / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in pairs] == [2, 4]
    for line, (first, second) in zip(pairs, zip(every[::2], every[1::2])):
        for key in ("loss", "velocity_loss", "align_loss", "grad_norm"):
            assert line[key] == pytest.approx((first[key] + second[key]) / 2, rel=1e-6), key
        assert line["images_per_second"] > 0


def test_load_subset_gives_the_trainers_columns_in_memory(subsets) -> None:
    import d2c_pack

    arrays = d2c_pack.load_subset(subsets["latent"])
    assert sorted(arrays.columns) == ["label", "latent", "text_embedding", "text_mask", "visual_tokens"] and len(arrays) == 12
    assert arrays.columns["latent"].dtype == torch.float16 and arrays.class_names == ["ant", "bee", "cat"]
    reference = datasets.load_dataset(str(subsets["latent"]), split="train").with_format("torch")[[3, 7]]
    batch = arrays.gather(torch.tensor([3, 7]))
    for name in ("latent", "visual_tokens", "text_embedding"):
        assert batch[name].dtype == torch.float32 and torch.equal(batch[name], reference[name].float()), name
    assert torch.equal(batch["label"], reference["label"]) and torch.equal(batch["text_mask"], reference["text_mask"].long())
    pixels = d2c_pack.load_subset(subsets["pixels"], columns=["image"])
    assert sorted(pixels.columns) == ["image", "label"] and pixels.columns["image"].shape == (12, 3, 16, 16)
    with pytest.raises(UserError, match="no latent column"):
        d2c_pack.load_subset(subsets["pixels"], columns=["latent"])
