"""The Select phase of a build: a budget and a selector applied to the scored images of a source."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from d2c_pack.selection.budget import parse_budget
from d2c_pack.selection.selectors import Features, auto_interval, difficulty_ranks, interval_stride, select

if TYPE_CHECKING:
    from d2c_pack.selection.score import Scores

FEATURE_SELECTORS = ("kcenter", "herding")  # the selectors that work on image features rather than scores


@dataclasses.dataclass
class Selection:
    """What the Select phase chose, as positions into a :class:`~d2c_pack.selection.score.Scores`."""

    positions: np.ndarray  # (M,) ascending
    ranks: np.ndarray  # (N,) difficulty rank of every scored image within its class, 0 = easiest
    per_class: list[int]  # the budget m_c of each class
    interval: int | None  # the stride k of interval sampling
    strides: list[int] | None = None  # the stride interval sampling used in each class (< k where a class is short; 0: taken whole)

    def stride_range(self) -> tuple[int, int] | None:
        """(min, max) of the strides used in the classes that were sampled, not taken whole; None without interval sampling."""
        used = [stride for stride in self.strides or () if stride > 0]
        return (min(used), max(used)) if used else None

    def reach(self, class_sizes: list[int]) -> tuple[float, float] | None:
        """(min, max) over the sampled classes of the share of a class's ranking, from its easiest image, that interval
        sampling can reach: ranks 0 … (m−1)·stride of n, i.e. ((m−1)·stride + 1) / n; None without interval sampling."""
        shares = [
            ((m - 1) * stride + 1) / n for n, m, stride in zip(class_sizes, self.per_class, self.strides or ()) if stride > 0
        ]  # fmt: skip
        return (min(shares), max(shares)) if shares else None


def select_subset(
    scores: Scores, num_classes: int, *, budget: str, selector: str, interval: str, seed: int, features: Features | None = None
) -> Selection:
    """Applies a selector and a budget to the scored images.

    Args:
        scores: every scored image of the source.
        num_classes: the source's number of classes C (a class without a scored image gets a budget of 0).
        budget: ``"0.8%"`` of each class, a total ``"10k"``, or ``"10/class"`` (:func:`~d2c_pack.selection.budget.parse_budget`).
        selector: one of :data:`~d2c_pack.selection.selectors.SELECTORS` (``"interval"`` is D2C's).
        interval: interval sampling's stride k, or ``"auto"`` (:func:`~d2c_pack.selection.selectors.auto_interval`).
        seed: the random selector's seed.
        features: one row per scored image, for kcenter and herding.
    """
    class_sizes = np.bincount(scores.labels, minlength=num_classes).tolist()
    per_class = parse_budget(budget, class_sizes)
    stride, strides = None, None
    if selector == "interval":
        stride = auto_interval(class_sizes, per_class) if interval == "auto" else int(interval)
        strides = [interval_stride(n, m, stride) for n, m in zip(class_sizes, per_class)]
    positions = select(
        selector, scores=scores.scores, labels=scores.labels, per_class=per_class, ids=scores.source_ids,
        k=stride, seed=seed, features=features,
    )  # fmt: skip
    ranks = difficulty_ranks(scores.scores, scores.labels, ids=scores.source_ids)
    return Selection(positions=positions, ranks=ranks, per_class=per_class, interval=stride, strides=strides)
