"""Attach: the training-ready columns of every selected image (text, DINOv2 features, VAE latents)."""

from d2c_pack.attach.columns import AttachArgs, Attached, attach_columns, visual_cls_features

__all__ = ["AttachArgs", "Attached", "attach_columns", "visual_cls_features"]
