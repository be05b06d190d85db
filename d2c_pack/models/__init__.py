"""Diffusion backbones: the official-compatible DiT/SiT network and its checkpoint formats."""

from d2c_pack.models.checkpoint import (
    BackboneConfig,
    backbone_config,
    backbone_weights_file,
    infer_config,
    load_backbone,
    save_backbone,
)
from d2c_pack.models.dit import BACKBONES, DiT

__all__ = ["BACKBONES", "BackboneConfig", "DiT", "backbone_config", "backbone_weights_file", "infer_config", "load_backbone", "save_backbone"]
