"""Diffusion backbones: the official-compatible DiT/SiT network and its checkpoint formats."""

from d2c_pack.models.checkpoint import (
    BackboneConfig,
    ClassText,
    backbone_config,
    backbone_weights_file,
    infer_config,
    load_backbone,
    load_class_text,
    save_backbone,
)
from d2c_pack.models.d2c import D2CSiT
from d2c_pack.models.dit import BACKBONES, DiT

__all__ = ["BACKBONES", "BackboneConfig", "ClassText", "D2CSiT", "DiT", "load_class_text", "backbone_config", "backbone_weights_file", "infer_config", "load_backbone", "save_backbone"]
