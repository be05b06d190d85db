"""The ADM suite's metrics on features: FID and sFID, Inception Score, precision and recall.

Defined as openai/guided-diffusion's ``evaluations/evaluator.py`` defines them (the evaluator of
ADM, DiT, SiT and REPA tables), on features computed elsewhere:

- FID / sFID: the Fréchet distance between Gaussians fitted to two feature sets (mean, unbiased
  covariance), through torch-fidelity's formula (the trace of the square root from eigenvalues;
  ADM takes scipy's ``sqrtm``: equal to float64 rounding);
- Inception Score: exp of the mean KL divergence between each sample's class distribution and
  the split's marginal, averaged over consecutive splits of 5,000 samples (not shuffled);
- precision / recall (Kynkäänniemi et al. 2019, k = 3): the share of samples inside some
  reference image's ball reaching its 3rd nearest reference neighbour, and conversely, with the
  squared distances computed as ADM's ``DistanceBlock`` computes them: in float16 for each block
  of 10,000 × 10,000 whose float16 distances are all finite, in float32 for the others (float32
  distances flip points on a ball's edge: 1–4 of 50,000, up to 2e-3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from d2c_pack.core.errors import require

IS_SPLIT_SIZE = 5_000  # samples per Inception Score split, as the ADM evaluator
PR_NEIGHBOURHOOD = 3  # k of precision/recall, as the ADM evaluator
PR_BATCH = 10_000  # rows and columns of a block of distances, as ADM: a block's float16 or float32 is decided on the whole block


@dataclasses.dataclass
class FeatureStatistics:
    """Mean (D,) and unbiased covariance (D, D), float64, of the features of ``count`` images (None: unknown)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None


class Moments:
    """Running float64 sums of features and of their outer products: the statistics of any number of batches.

    The sums live on the device of the first batch (a GPU adds 1.28M × 2048² products in seconds).
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.total: torch.Tensor | None = None  # (D,)
        self.outer: torch.Tensor | None = None  # (D, D)
        self.count = 0

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().double()  # (B, D)
        if self.total is None:
            self.total = features.new_zeros(self.dim)
            self.outer = features.new_zeros(self.dim, self.dim)
        self.total += features.sum(0)
        self.outer += features.T @ features
        self.count += len(features)

    def statistics(self) -> FeatureStatistics:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mu = self.total / self.count  # (D,)
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)  # (D, D), as np.cov
        return FeatureStatistics(mu.cpu().numpy(), sigma.cpu().numpy(), self.count)


def frechet_distance(samples: FeatureStatistics, reference: FeatureStatistics) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½."""
    if samples.mu.shape != reference.mu.shape:
        raise ValueError(f"feature sizes differ: {samples.mu.shape[0]} and {reference.mu.shape[0]}")
    fid = require("torch_fidelity.metric_fid", "eval", "FID")
    stats = [{"mu": s.mu.astype(np.float64), "sigma": s.sigma.astype(np.float64)} for s in (samples, reference)]
    return float(fid.fid_statistics_to_metric(*stats, verbose=False)[fid.KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """Mean and standard deviation over consecutive splits of ``split_size`` samples (the last may be shorter).

    ``logits`` (N, C) are the classifier's unnormalised log-probabilities (for Inception v3, its
    1008 logits without bias, as the ADM evaluator's softmax graph); ADM reports the mean.
    """
    log_p = torch.log_softmax(logits.double(), dim=1)  # (N, C)
    scores = []
    for part in log_p.split(split_size):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))  # (C,) log of the split's mean p
        kl = (part.exp() * (part - log_marginal)).sum(1)  # (n,)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def precision_recall(samples: torch.Tensor, reference: torch.Tensor, k: int = PR_NEIGHBOURHOOD) -> tuple[float, float]:
    """Improved precision and recall of sample features (N, D) against reference features (M, D), as the ADM evaluator.

    Each point's radius is the distance to its k-th nearest neighbour in its own set (itself
    included at distance 0, as ADM's partition); precision is the share of samples within some
    reference point's radius, recall the share of reference points within some sample's.
    """
    if min(len(samples), len(reference)) <= k:
        raise ValueError(f"precision/recall with k = {k} need more than {k} samples and reference images, got {len(samples)} and {len(reference)}")
    samples_radii, reference_radii = manifold_radii(samples, k), manifold_radii(reference, k)
    samples_in = torch.zeros(len(samples), dtype=torch.bool, device=samples.device)
    reference_in = torch.zeros(len(reference), dtype=torch.bool, device=samples.device)
    for rows in _blocks(len(reference)):
        for columns in _blocks(len(samples)):
            distances = pairwise_distances(reference[rows], samples[columns])  # (rows, columns), reference first as ADM
            reference_in[rows] |= (distances <= samples_radii[columns][None, :]).any(1)
            samples_in[columns] |= (distances <= reference_radii[rows][:, None]).any(0)
    return float(samples_in.double().mean()), float(reference_in.double().mean())


def manifold_radii(features: torch.Tensor, k: int = PR_NEIGHBOURHOOD) -> torch.Tensor:
    """Each point's squared distance to its k-th nearest neighbour among ``features`` (N,), itself counted at index 0."""
    radii = []
    for rows in _blocks(len(features)):
        # The k + 1 smallest of each column block hold the k + 1 smallest of the whole row.
        distances = (pairwise_distances(features[rows], features[columns]) for columns in _blocks(len(features)))
        nearest = [block.topk(min(k + 1, block.shape[1]), largest=False).values for block in distances]
        radii.append(torch.cat(nearest, dim=1).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def pairwise_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, M) float32 of ADM's ``DistanceBlock``: float16 arithmetic when all are finite, else float32.

    As TensorFlow runs it on a GPU: float16 squares summed in float32 then rounded, a float16
    matmul accumulated in float32 then rounded, and ‖u‖² − 2u·v + ‖v‖² one rounded float16 operation
    at a time, clamped at 0. (The float16 inputs fit TF32 exactly, so TF32 matmuls change nothing.)
    """
    half = _squared_distances(u.half(), v.half())
    if torch.isfinite(half).all():
        return half.float()
    return _squared_distances(u.float(), v.float())


def _squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm_u = u.square().float().sum(1).to(u.dtype)  # (N,)
    norm_v = v.square().float().sum(1).to(v.dtype)  # (M,)
    products = (u.float() @ v.float().T).to(u.dtype)  # (N, M)
    return (norm_u[:, None] - 2 * products + norm_v[None, :]).clamp_min(0)


def _blocks(total: int) -> list[slice]:
    return [slice(start, min(start + PR_BATCH, total)) for start in range(0, total, PR_BATCH)]
