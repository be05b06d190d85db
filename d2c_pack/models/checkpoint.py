"""Saving and loading backbones: official raw state dicts and this project's safetensors folders.

Two formats are read by :func:`load_backbone`:

* **official files** (``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt`` or a DiT/SiT training
  checkpoint holding ``"ema"``/``"model"``): the architecture is inferred from the tensor
  shapes; what the network predicts (ε or velocity) is read from the file name or given. The
  number of heads leaves no trace in the shapes: it is the DiT/SiT table's for the width and
  depth, else it must be given (``num_heads``; CLI ``--num-heads``). A REPA ``train.py``
  checkpoint is recognised by its projector keys and converted (:mod:`d2c_pack.models.repa`).
* **project folders** written by :func:`save_backbone`: ``config.json`` (a
  :class:`BackboneConfig`) beside ``model.safetensors`` (and, in training checkpoints,
  ``ema.safetensors``, which is preferred).

Pickled checkpoints are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.registry import resolve_model_path
from d2c_pack.models.d2c import D2CSiT, default_encoder_depth
from d2c_pack.models.dit import BACKBONES, DiT
from d2c_pack.models.repa import RepaSettings, from_repa, is_repa_state_dict, repa_settings
from d2c_pack.models.sizes import MODEL_SIZES, PROJECTOR_DIM

Prediction = Literal["velocity", "epsilon"]
PREDICTIONS: tuple[str, ...] = ("velocity", "epsilon")
# The latent space of the official DiT and SiT checkpoints.
OFFICIAL_VAE = "stabilityai/sd-vae-ft-ema"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
CLASS_TEXT_NAME = "class_text.safetensors"  # the text conditioning of each class, for sampling text-conditioned models
# Where the official release files live (weights cannot be fetched at run time on every machine).
OFFICIAL_DOWNLOADS = {
    f"DiT-XL-2-{size}x{size}.pt": f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{size}x{size}.pt" for size in (256, 512)
}


@dataclasses.dataclass
class BackboneConfig:
    """Everything needed to rebuild a backbone and use it: architecture, target and input space.

    ``vae`` names the diffusers ``AutoencoderKL`` whose latents the backbone sees (``None`` = pixel
    space) by Hub id or folder name, never a local path (see ``d2c_pack.models.latents.vae_reference``),
    and ``vae_sha256`` is the hash of its weights where known; ``image_size`` is the image
    resolution R before encoding.
    """

    name: str
    input_size: int
    patch_size: int
    in_channels: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    class_dropout_prob: float
    num_classes: int
    learn_sigma: bool
    prediction: Prediction
    vae: str | None
    image_size: int
    class_names: list[str] | None = None
    vae_sha256: str | None = None
    # D2C additions; None leaves them out and the network is the official one.
    text_dim: int | None = None
    text_length: int = 16
    visual_dim: int | None = None
    encoder_depth: int | None = None
    projector_dim: int = PROJECTOR_DIM
    class_cond: bool = True

    def model_kwargs(self) -> dict:
        """The official ``DiT(...)`` constructor arguments."""
        keys = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio")
        extra = ("class_dropout_prob", "num_classes", "learn_sigma")
        return {k: getattr(self, k) for k in keys + extra}

    def build(self) -> D2CSiT:
        d2c = {k: getattr(self, k) for k in ("text_dim", "text_length", "visual_dim", "encoder_depth", "projector_dim", "class_cond")}
        return D2CSiT(**self.model_kwargs(), **d2c)


def backbone_config(
    name: str,
    *,
    image_size: int,
    num_classes: int,
    vae: str | None,
    in_channels: int,
    prediction: Prediction | None = None,
    learn_sigma: bool = True,
    class_dropout_prob: float = 0.1,
    class_names: list[str] | None = None,
    downsample: int | None = None,
) -> BackboneConfig:
    """The config of a ``BACKBONES`` entry such as ``"SiT-XL/2"`` for a given data space.

    The prediction target defaults to the family's: velocity for SiT, ε for DiT. ``downsample``
    is the VAE's spatial reduction (default 8 with a VAE, 1 in pixel space).
    """
    if name not in BACKBONES:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(BACKBONES)}")
    family, size_patch = name.split("-", 1)
    size, patch = size_patch.split("/")
    depth, hidden, heads = MODEL_SIZES[size]
    downsample = downsample or (8 if vae else 1)
    if image_size % (downsample * int(patch)):
        raise UserError(f"image size {image_size} is not divisible by {downsample * int(patch)} for {name}")
    return BackboneConfig(
        name=name,
        input_size=image_size // downsample,
        patch_size=int(patch),
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        class_dropout_prob=class_dropout_prob,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        prediction=prediction or ("velocity" if family == "SiT" else "epsilon"),
        vae=vae,
        image_size=image_size,
        class_names=class_names,
    )


def save_backbone(
    model: DiT, config: BackboneConfig, folder: str | Path, *, ema: DiT | None = None, class_text: ClassText | None = None
) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` (and ``ema.safetensors``, ``class_text.safetensors`` if given) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    save_file(_contiguous_state_dict(model), str(folder / WEIGHTS_NAME))
    if ema is not None:
        save_file(_contiguous_state_dict(ema), str(folder / EMA_WEIGHTS_NAME))
    if class_text is not None:
        save_file({"embedding": class_text.embedding.contiguous(), "mask": class_text.mask.contiguous()}, str(folder / CLASS_TEXT_NAME))
    return folder


@dataclasses.dataclass
class ClassText:
    """One caption's token embedding per class: what a text-conditioned model is sampled with."""

    embedding: torch.Tensor  # (C, L, D_text) float16
    mask: torch.Tensor  # (C, L) int8


def load_class_text(path: str | Path) -> ClassText | None:
    """The per-class text conditioning saved next to a model, or None (a model trained without text)."""
    file = resolve_backbone_path(path)
    file = file / CLASS_TEXT_NAME if file.is_dir() else file.parent / CLASS_TEXT_NAME
    if not file.exists():
        return None
    tensors = load_file(str(file))
    return ClassText(tensors["embedding"], tensors["mask"])


def load_backbone(
    path: str | Path,
    *,
    prediction: Prediction | None = None,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    num_heads: int | None = None,
) -> tuple[DiT, BackboneConfig]:
    """Loads a backbone from an official or REPA ``.pt`` file or a project folder, in eval mode.

    ``prediction`` overrides what the file name or config says the network predicts.
    ``use_ema`` picks ``ema.safetensors`` over ``model.safetensors`` in a training checkpoint
    and ``"ema"`` over ``"model"`` in an official training checkpoint. ``num_heads`` is the
    attention heads of a ``.pt`` whose width is not a DiT/SiT table size (a folder records them).
    """
    weights = backbone_weights_file(path, use_ema=use_ema)
    if weights.suffix == ".safetensors":
        state_dict, config = load_file(str(weights), device=str(map_location)), read_config(weights.parent)
    else:
        official = _official_weights(weights, use_ema, map_location)
        state_dict = official.state_dict
        if official.repa is not None and prediction not in (None, "velocity"):
            raise UserError(f"{weights.name} is a REPA checkpoint: it predicts velocity, not {prediction}")
        inferred = "velocity" if official.repa is not None else prediction or _prediction_from_filename(weights)
        config = infer_config(state_dict, prediction=inferred, num_heads=num_heads, repa=official.repa)
    if prediction is not None:
        config.prediction = prediction
    model = config.build()
    _load_weights(model, state_dict, weights)
    return model.eval().to(map_location), config


def read_state_dict(path: str | Path, *, use_ema: bool = True, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The weights ``load_backbone(path)`` would load, without building a model (e.g. to initialise another one);
    a REPA checkpoint's converted to this package's keys and time convention."""
    weights = backbone_weights_file(path, use_ema=use_ema)
    if weights.suffix == ".safetensors":
        return load_file(str(weights), device=str(map_location))
    return _official_weights(weights, use_ema, map_location).state_dict


def backbone_weights_file(path: str | Path, *, use_ema: bool = True) -> Path:
    """The file ``load_backbone(path)`` reads its weights from (what a scorer's sha256 is taken of)."""
    path = resolve_backbone_path(path)
    if path.is_dir():
        read_config(path)  # a clear error for a folder that is not a backbone
        return path / (EMA_WEIGHTS_NAME if use_ema and (path / EMA_WEIGHTS_NAME).exists() else WEIGHTS_NAME)
    if path.is_file():
        return path
    hint = f" (download it from {OFFICIAL_DOWNLOADS[path.name]})" if path.name in OFFICIAL_DOWNLOADS else ""
    raise UserError(f"no backbone at {path}: expected an official .pt file or a folder with {CONFIG_NAME}{hint}")


def resolve_backbone_path(path: str | Path) -> Path:
    """A path as given, or the weights a plugin model name stands for (``demo:digits``, :mod:`d2c_pack.core.registry`)."""
    return Path(resolve_model_path(str(path)))


def read_config(folder: Path) -> BackboneConfig:
    config_file = folder / CONFIG_NAME
    if not config_file.exists():
        raise UserError(f"{folder} has no {CONFIG_NAME}: not a d2c-pack backbone folder")
    fields = {f.name for f in dataclasses.fields(BackboneConfig)}
    return BackboneConfig(**{k: v for k, v in json.loads(config_file.read_text()).items() if k in fields})


def infer_config(
    state_dict: dict[str, torch.Tensor], *, prediction: Prediction, num_heads: int | None = None, repa: RepaSettings | None = None
) -> BackboneConfig:
    """Reads the architecture of an official DiT/SiT state dict (or a converted REPA one) from its tensor shapes.

    The number of heads leaves no trace in the shapes: ``num_heads`` where given, else the
    official size's with the same width and depth; any other width without ``num_heads`` is
    refused rather than guessed (a wrong head count loads without error and computes
    something else). ``repa`` gives what a REPA checkpoint's shapes do not show.
    """
    try:
        proj = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
        num_patches = state_dict["pos_embed"].shape[1]
        out_features = state_dict["final_layer.linear.weight"].shape[0]  # p*p*C_out
        fc1 = state_dict["blocks.0.mlp.fc1.weight"]  # (D*mlp_ratio, D)
        num_labels = state_dict["y_embedder.embedding_table.weight"].shape[0]
    except KeyError as missing:
        raise UserError(f"not a DiT/SiT state dict: key {missing} is missing") from None
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = num_heads if num_heads is not None else next((h for d, w, h in MODEL_SIZES.values() if (d, w) == (depth, hidden)), None)
    if heads is None:
        sizes = ", ".join(f"{w} wide × {d} deep" for d, w, _ in MODEL_SIZES.values())
        raise UserError(f"a {hidden}-wide, {depth}-block model is no DiT/SiT size ({sizes}): give its attention heads with --num-heads")
    if heads <= 0 or hidden % heads:
        raise UserError(f"--num-heads must divide the model's width {hidden}, got {heads}")
    grid = int(round(num_patches**0.5))
    # Official checkpoints are always trained with label dropout, hence the extra null-class row; REPA's args say.
    dropout = 0.1 if repa is None else repa.class_dropout_prob
    projector = state_dict.get("projector.0.weight")  # (projector_dim, D), present in converted REPA weights
    return BackboneConfig(
        name=_official_name(hidden, depth, patch, prediction),
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=fc1.shape[0] / hidden,
        class_dropout_prob=dropout,
        num_classes=num_labels - int(dropout > 0),
        learn_sigma=out_features == 2 * patch * patch * in_channels,
        prediction=prediction,
        vae=OFFICIAL_VAE if in_channels == 4 else None,
        image_size=grid * patch * (8 if in_channels == 4 else 1),
        visual_dim=None if projector is None else state_dict["projector.4.weight"].shape[0],
        encoder_depth=None if projector is None else repa.encoder_depth if repa else default_encoder_depth(depth),
        projector_dim=PROJECTOR_DIM if projector is None else projector.shape[0],
    )


def _official_name(hidden: int, depth: int, patch: int, prediction: Prediction) -> str:
    family = "SiT" if prediction == "velocity" else "DiT"
    size = next((s for s, (d, w, _) in MODEL_SIZES.items() if (d, w) == (depth, hidden)), f"{depth}x{hidden}")
    return f"{family}-{size}/{patch}"


def _prediction_from_filename(path: Path) -> Prediction:
    name = path.name.lower()
    if name.startswith("sit"):
        return "velocity"
    if name.startswith("dit"):
        return "epsilon"
    raise UserError(
        f"cannot tell from the name {path.name!r} whether it predicts noise (DiT) or velocity (SiT): "
        "pass prediction='epsilon' or 'velocity' (CLI: --prediction)"
    )


@dataclasses.dataclass
class OfficialWeights:
    """The state dict of an official ``.pt``; ``repa`` is set for a REPA checkpoint (its weights then converted)."""

    state_dict: dict[str, torch.Tensor]
    repa: RepaSettings | None = None


def _official_weights(path: Path, use_ema: bool, map_location) -> OfficialWeights:
    # DiT/SiT/REPA training checkpoints also hold their argparse Namespace, a plain attribute bag.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # pickle errors have no common base class
            raise UserError(f"cannot read {path} as a weights-only checkpoint (refusing to unpickle anything but tensors): {first_line(err)}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path.name} holds a {type(checkpoint).__name__}, not a state dict or a training checkpoint")
    state_dict = next((checkpoint[key] for key in (("ema", "model") if use_ema else ("model", "ema")) if isinstance(checkpoint.get(key), dict)), checkpoint)
    if not_tensors := [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]:
        raise UserError(f"{path.name} is not a DiT/SiT/REPA checkpoint: {not_tensors[0]!r} is not a tensor (expected a state dict, or one under 'ema'/'model')")
    if is_repa_state_dict(state_dict):
        return OfficialWeights(from_repa(state_dict), repa_settings(checkpoint.get("args"), state_dict))
    return OfficialWeights(state_dict)


def _load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)``, its failures as one line naming the first key that does not fit."""
    own = model.state_dict()
    kinds = {
        "unknown keys": [key for key in state_dict if key not in own],
        "missing keys": [key for key in own if key not in state_dict],
        "tensors of another shape": [
            f"{key} {tuple(value.shape)}, expected {tuple(own[key].shape)}" for key, value in state_dict.items() if key in own and value.shape != own[key].shape
        ],
    }
    if problems := [f"{len(found)} {kind} (first: {found[0]})" for kind, found in kinds.items() if found]:
        raise UserError(f"{source.name} does not match the DiT/SiT/REPA layout it was read as: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _contiguous_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}
