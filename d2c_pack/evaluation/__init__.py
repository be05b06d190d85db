"""Generate and evaluate: sampling a trained model (PNG grids, ADM ``.npz``) on every rank, and FID, sFID, IS,
precision and recall as the ADM evaluator computes them.
"""
