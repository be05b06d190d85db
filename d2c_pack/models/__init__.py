"""Diffusion backbones: the official-compatible DiT/SiT network (:mod:`~d2c_pack.models.dit`), D2C's
DC-Embedding and alignment projector (:mod:`~d2c_pack.models.d2c`), their checkpoint formats
(:mod:`~d2c_pack.models.checkpoint`, :mod:`~d2c_pack.models.repa`), the VAE latent space
(:mod:`~d2c_pack.models.latents`) and the size tables (:mod:`~d2c_pack.models.sizes`, no torch).

Import the module you need: this package's ``__init__`` loads nothing, so that the settings can
read :mod:`~d2c_pack.models.sizes` without torch.
"""
