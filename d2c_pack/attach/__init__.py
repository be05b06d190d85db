"""Attach: the training-ready columns of every selected image (text embeddings, DINOv2 features, VAE latents).

Modules: :mod:`~d2c_pack.attach.settings` (the flags, no torch), :mod:`~d2c_pack.attach.text`,
:mod:`~d2c_pack.attach.visual` (the encoders) and :mod:`~d2c_pack.attach.columns` (the columns of a build).
"""
