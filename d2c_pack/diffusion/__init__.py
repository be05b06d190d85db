"""The diffusion process shared by training and sampling: SiT's linear interpolant and its velocity loss
(:mod:`~d2c_pack.diffusion.transport`) and the samplers' settings (:mod:`~d2c_pack.diffusion.sampling`, no torch).
"""
