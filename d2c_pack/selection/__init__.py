"""Select: the diffusion difficulty score of every source image (:mod:`~d2c_pack.selection.score`, cached in
resumable chunks), the per-class budgets and the selectors over the scores (interval sampling is D2C's).
"""
