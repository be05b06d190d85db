"""Train: the reference SiT trainer with DC-Embedding and visual alignment (:mod:`~d2c_pack.training.loop`),
its data paths (in memory or in place) and the demo's visual-encoder trainer.
"""
