"""The backbone matches the official DiT/SiT layout and survives every save/load path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import make_repa_checkpoint, repa_state_dict

from d2c_pack.core.errors import UserError
from d2c_pack.diffusion.transport import Condition, velocity
from d2c_pack.models.checkpoint import backbone_config, load_backbone, save_backbone
from d2c_pack.models.dit import BACKBONES, DiT

# Key shapes of the official DiT checkpoints (copied from the project's shared reference facts).
REFERENCE = Path(__file__).parent / "data" / "dit_state_dict_shapes.json"


def randomized(model: DiT, seed: int = 0) -> DiT:
    """The model with every weight random: DiT's zero-init output layers would make any comparison trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def tiny_inputs(model: DiT, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = model.x_embedder.img_size[0]
    x = torch.randn(batch, model.in_channels, size, size, generator=generator)
    t = torch.rand(batch, generator=generator)
    y = torch.randint(0, model.y_embedder.num_classes, (batch,), generator=generator)
    return x, t, y


@pytest.mark.parametrize("name", ["DiT-XL/2", "DiT-S/2"])
def test_state_dict_keys_and_shapes_match_official(name: str) -> None:
    reference = json.loads(REFERENCE.read_text())[name]
    with torch.device("meta"):  # shapes only: no 2.7 GB allocation for XL
        model = BACKBONES[name](input_size=32, num_classes=1000)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference


def test_backbones_cover_official_sizes_and_patches() -> None:
    official = {f"{f}-{s}/{p}" for f in ("DiT", "SiT") for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    assert official <= set(BACKBONES)
    with torch.device("meta"):
        model = BACKBONES["SiT-B/4"](input_size=32)
    assert (len(model.blocks), model.x_embedder.proj.out_channels, model.patch_size, model.num_heads) == (12, 768, 4, 12)


def test_output_layout_with_and_without_sigma() -> None:
    for learn_sigma, channels in ((True, 6), (False, 3)):
        model = randomized(BACKBONES["SiT-T/4"](input_size=16, in_channels=3, num_classes=5, learn_sigma=learn_sigma))
        assert model(*tiny_inputs(model)).shape == (4, channels, 16, 16)


def test_new_model_predicts_zero_and_blocks_start_as_identity() -> None:
    model = BACKBONES["SiT-T/4"](input_size=16, in_channels=3, num_classes=5).eval()
    assert torch.count_nonzero(model(*tiny_inputs(model))) == 0


def test_sampling_guidance_is_classifier_free_guidance_on_every_channel() -> None:
    """The samplers' velocity: the conditional prediction at scale 1, v_null + s·(v_cond − v_null) on all channels above."""
    model = randomized(BACKBONES["DiT-T/4"](input_size=16, in_channels=3, num_classes=5))
    x, _, y = tiny_inputs(model, batch=2)
    t, times, null = 0.3, torch.full((2,), 0.3), torch.full_like(y, 5)
    torch.testing.assert_close(velocity(model, x, t, Condition(y), cfg_scale=1.0), model(x, times, y)[:, :3], rtol=1e-5, atol=1e-5)
    uncond = model(x, times, null)[:, :3]
    expected = uncond + 4.0 * (model(x, times, y)[:, :3] - uncond)
    torch.testing.assert_close(velocity(model, x, t, Condition(y), cfg_scale=4.0), expected, rtol=1e-4, atol=1e-4)


def test_saved_and_loaded_model_gives_identical_outputs(tmp_path: Path) -> None:
    config = backbone_config("SiT-T/4", image_size=16, num_classes=5, vae=None, in_channels=3)
    model = randomized(config.build())
    save_backbone(model, config, tmp_path / "backbone")
    loaded, loaded_config = load_backbone(tmp_path / "backbone")
    assert loaded_config == config
    inputs = tiny_inputs(model)
    assert torch.equal(loaded(*inputs), model(*inputs))


def test_training_checkpoint_loads_ema_weights_by_default(tmp_path: Path) -> None:
    config = backbone_config("SiT-T/4", image_size=16, num_classes=5, vae=None, in_channels=3)
    model, ema = randomized(config.build(), seed=1), randomized(config.build(), seed=2)
    save_backbone(model, config, tmp_path, ema=ema)
    inputs = tiny_inputs(model)
    assert torch.equal(load_backbone(tmp_path)[0](*inputs), ema(*inputs))
    assert torch.equal(load_backbone(tmp_path, use_ema=False)[0](*inputs), model(*inputs))


def test_official_raw_state_dict_loads_with_inferred_config(tmp_path: Path) -> None:
    official = randomized(BACKBONES["SiT-T/2"](input_size=8, in_channels=4, num_classes=7))
    path = tmp_path / "SiT-T-2-64x64.pt"
    torch.save(official.state_dict(), path)
    loaded, config = load_backbone(path)
    assert (config.name, config.prediction, config.input_size, config.num_classes) == ("SiT-T/2", "velocity", 8, 7)
    assert (config.learn_sigma, config.num_heads, config.vae, config.image_size) == (True, 4, "stabilityai/sd-vae-ft-ema", 64)
    inputs = tiny_inputs(official)
    assert torch.equal(loaded(*inputs), official(*inputs))


def test_official_training_checkpoint_with_args_prefers_ema(tmp_path: Path) -> None:
    model, ema = randomized(BACKBONES["DiT-T/4"](input_size=8, in_channels=4, num_classes=3), 1), randomized(
        BACKBONES["DiT-T/4"](input_size=8, in_channels=4, num_classes=3), 2
    )
    path = tmp_path / "DiT-0050000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    loaded, config = load_backbone(path)
    assert config.prediction == "epsilon"
    inputs = tiny_inputs(ema)
    assert torch.equal(loaded(*inputs), ema(*inputs))


def test_ambiguous_file_name_needs_explicit_prediction(tmp_path: Path) -> None:
    model = BACKBONES["SiT-T/4"](input_size=8, in_channels=4, num_classes=3)
    path = tmp_path / "my-model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match="velocity"):
        load_backbone(path)
    assert load_backbone(path, prediction="velocity")[1].prediction == "velocity"


def test_non_weights_only_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "SiT-evil.pt"
    torch.save({"model": BACKBONES["SiT-T/4"](input_size=8).state_dict(), "payload": Path("/etc/passwd")}, path)
    with pytest.raises(UserError, match="weights-only"):
        load_backbone(path)


def test_unknown_model_name_and_missing_path_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown model"):
        backbone_config("SiT-XXL/2", image_size=32, num_classes=10, vae=None, in_channels=3)
    with pytest.raises(UserError, match="no backbone"):
        load_backbone(tmp_path / "missing.pt")


def test_repa_checkpoint_loads_its_ema_weights_converted_to_sit_time(tmp_path: Path) -> None:
    """REPA trains x_s = (1 − s)x + sε with target ε − x: loaded, the model is SiT's v(x, t) = −f_REPA(x, 1 − t)."""
    shape = dict(depth=6, hidden=128, z_dim=32, projector_dim=64)  # SiT-T's width and depth
    weights = make_repa_checkpoint(tmp_path / "0000003.pt", **shape)
    model, config = load_backbone(tmp_path / "0000003.pt")
    assert (config.name, config.prediction, config.learn_sigma, config.num_classes, config.class_dropout_prob) == ("SiT-T/2", "velocity", False, 3, 0.1)
    assert (config.visual_dim, config.projector_dim, config.encoder_depth, config.text_dim, config.num_heads) == (32, 64, 2, None, 4)
    loaded, ema = model.state_dict(), weights["ema"]
    renamed = {key.replace("projectors.0.", "projector."): value for key, value in ema.items()}
    converted = {"t_embedder.mlp.0.weight", "final_layer.linear.weight", "final_layer.linear.bias"}
    assert set(loaded) == set(renamed)
    assert all(torch.equal(loaded[key], renamed[key]) for key in set(renamed) - converted)  # the EMA, bit for bit
    assert torch.equal(loaded["final_layer.linear.bias"], -ema["final_layer.linear.bias"])
    assert not torch.equal(loaded["blocks.0.attn.qkv.weight"], weights["model"]["blocks.0.attn.qkv.weight"])
    # REPA's network is this module tree with the file's own weights; it is fed REPA time s = 1 − t.
    repa = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=6, num_heads=4, num_classes=3, learn_sigma=False)
    repa.load_state_dict({k: v for k, v in ema.items() if not k.startswith("projectors.")})
    x, t, y = tiny_inputs(model)
    torch.testing.assert_close(model(x, t, y), -repa.eval()(x, 1 - t, y), rtol=1e-5, atol=1e-5)
    assert torch.equal(load_backbone(tmp_path / "0000003.pt", use_ema=False)[0].state_dict()["blocks.0.attn.qkv.weight"], weights["model"]["blocks.0.attn.qkv.weight"])


def test_a_pt_that_matches_nothing_known_is_one_line(tmp_path: Path) -> None:
    state = repa_state_dict(depth=6, hidden=128, z_dim=32, projector_dim=64)
    state["blocks.0.attn.q_norm.weight"] = torch.ones(32)  # REPA --qk-norm: a layer this SiT does not have
    torch.save({"ema": state, "args": argparse.Namespace(encoder_depth=2)}, tmp_path / "qk-norm.pt")
    with pytest.raises(UserError, match=r"^qk-norm.pt does not match .*1 unknown keys \(first: blocks.0.attn.q_norm.weight\)$"):
        load_backbone(tmp_path / "qk-norm.pt")
    torch.save({"state_dict": state}, tmp_path / "SiT-nested.pt")
    with pytest.raises(UserError, match="'state_dict' is not a tensor"):
        load_backbone(tmp_path / "SiT-nested.pt")
    two = state | {key.replace("projectors.0.", "projectors.1."): value for key, value in state.items() if key.startswith("projectors.0.")}
    torch.save(two, tmp_path / "two-encoders.pt")
    with pytest.raises(UserError, match="2 projectors"):
        load_backbone(tmp_path / "two-encoders.pt")
    torch.save(state, tmp_path / "no-args.pt")  # REPA's default aligned block 8 does not exist in 6 blocks
    with pytest.raises(UserError, match="aligns block 8 of a 6-block SiT"):
        load_backbone(tmp_path / "no-args.pt")


def test_width_off_the_table_needs_num_heads_and_is_never_guessed(tmp_path: Path) -> None:
    """A depth-4, width-128, 4-head DiT: the old guess (width / 64 = 2 heads) loaded silently and computed something else."""
    official = randomized(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=4, num_heads=4, num_classes=3))
    path = tmp_path / "DiT-custom.pt"
    torch.save(official.state_dict(), path)
    with pytest.raises(UserError, match="128-wide, 4-block model is no DiT/SiT size .*--num-heads"):
        load_backbone(path)
    for wrong in (3, 0):
        with pytest.raises(UserError, match=f"--num-heads must divide the model's width 128, got {wrong}"):
            load_backbone(path, num_heads=wrong)
    loaded, config = load_backbone(path, num_heads=4)
    inputs = tiny_inputs(official)
    assert config.num_heads == 4 and torch.equal(loaded(*inputs), official(*inputs))


def test_sample_and_the_scorer_take_num_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import sys

    from d2c_pack import cli
    from d2c_pack.selection.score import load_scorer
    from d2c_pack.selection.settings import ScoreConfig

    path = tmp_path / "SiT-custom.pt"
    torch.save(randomized(DiT(input_size=8, patch_size=4, in_channels=3, hidden_size=96, depth=2, num_heads=3, num_classes=2)).state_dict(), path)
    sample = ["d2c-pack", "sample", str(path), "--out", str(tmp_path / "grid.png"), "--sampling-steps", "1", "--per-class", "1", "--device", "cpu"]
    for extra, code in (([], 2), (["--num-heads", "3"], 0)):
        monkeypatch.setattr(sys, "argv", sample + extra)
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "96-wide, 2-block model is no DiT/SiT size" in err and "--num-heads" in err and (tmp_path / "grid.png").is_file()
    scorer, _ = load_scorer(ScoreConfig(source="unused", scorer=str(path), resolution=8, num_heads=3, device="cpu"), torch.device("cpu"))
    assert scorer.model.blocks[0].attn.num_heads == 3
