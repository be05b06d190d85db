"""Per-class selectors: D2C's interval sampling over diffusion difficulty, and its baselines.

Every selector works class by class and returns the selected positions (indices into its
inputs) as a sorted int64 array. ``per_class`` is one budget for every class present or a
sequence of budgets indexed by class; a class with no more images than its budget is taken
whole. Difficulty ranks sort by score (higher = harder), then source id, then position, so a
selection never depends on the order the images arrive in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar

Selector = Callable[..., np.ndarray]
Budget = int | Sequence[int]
Ids = Sequence[str] | None
SELECTORS: tuple[str, ...] = ("interval", "min", "max", "medium", "random", "kcenter", "herding")


class Features(Protocol):
    """(N, D) image features indexable by an int64 position array: a NumPy array or a :class:`~d2c_pack.selection.rowfile.RowFile`."""

    def __getitem__(self, positions: np.ndarray) -> np.ndarray: ...


def _classes(
    labels: np.ndarray, per_class: Budget, *keys: np.ndarray
) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yield ``(class, members, budget)``; members sorted by ``keys`` (last first), then index."""
    labels = np.asarray(labels, dtype=np.int64)
    budgets = _budgets(labels, per_class)
    order = np.lexsort((*keys, labels))  # lexsort is stable: full ties keep position order
    bounds = np.searchsorted(labels[order], np.arange(len(budgets) + 1))
    for c, m in enumerate(budgets):
        yield c, order[bounds[c] : bounds[c + 1]], int(m)


def _budgets(labels: np.ndarray, per_class: Budget) -> np.ndarray:
    """The budget of every class as int64, checked against the labels."""
    if isinstance(per_class, (int, np.integer)):
        n_classes = int(labels.max()) + 1 if labels.size else 0
        budgets = np.full(n_classes, per_class, dtype=np.int64)
    else:
        budgets = np.asarray(per_class, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(budgets)):
        raise ValueError(f"labels must lie in 0..{len(budgets) - 1}, one budget per class")
    if (budgets < 0).any():
        raise ValueError("per-class budgets must be >= 0")
    return budgets


def _rank_keys(scores: np.ndarray, ids: Ids) -> tuple[np.ndarray, ...]:
    scores = np.asarray(scores, dtype=np.float64)
    return (scores,) if ids is None else (np.asarray(ids, dtype=str), scores)


def _select(
    labels: np.ndarray,
    per_class: Budget,
    pick: Callable[[int, np.ndarray, int], np.ndarray],
    *keys: np.ndarray,
) -> np.ndarray:
    """Apply ``pick(class, members, m)`` to every class larger than its budget ``m >= 1``."""
    picks = [np.empty(0, dtype=np.int64)]
    for c, members, m in _classes(labels, per_class, *keys):
        if len(members) > m:
            members = pick(c, members, m) if m else members[:0]
        picks.append(members)
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _by_rank(
    scores: np.ndarray,
    labels: np.ndarray,
    per_class: Budget,
    ids: Ids,
    ranks: Callable[[int, int], np.ndarray],
) -> np.ndarray:
    """Select the ranks ``ranks(n, m)`` of every class, 0 = easiest."""
    keys = _rank_keys(scores, ids)
    return _select(labels, per_class, lambda c, members, m: members[ranks(len(members), m)], *keys)


def difficulty_ranks(scores: np.ndarray, labels: np.ndarray, ids: Ids = None) -> np.ndarray:
    """Rank of every image within its class, 0 = easiest (lowest score), as int64 (N,)."""
    ranks = np.empty(len(labels), dtype=np.int64)
    for _, members, _ in _classes(labels, 0, *_rank_keys(scores, ids)):
        ranks[members] = np.arange(len(members))
    return ranks


def interval_select(
    scores: np.ndarray, labels: np.ndarray, per_class: Budget, k: int, ids: Ids = None
) -> np.ndarray:
    """D2C interval sampling: ranks 0, k, 2k, ... of every class, spanning its difficulty range.

    Where ``(m-1)·k`` would run past a class of ``n`` images, the stride shrinks for that class
    to ``max(1, (n-1) // (m-1))``.
    """
    if k < 1:
        raise ValueError(f"interval k must be >= 1, got {k}")
    return _by_rank(scores, labels, per_class, ids, lambda n, m: np.arange(m) * interval_stride(n, m, k))


def interval_stride(n: int, m: int, k: int) -> int:
    """The stride interval sampling uses in a class of ``n`` images with budget ``m``: ``k``, or less where
    ``(m-1)·k`` would run past the class (then ``max(1, (n-1) // (m-1))``); 0 where the class is taken whole."""
    if n <= m:
        return 0
    return k if (m - 1) * k < n else max(1, (n - 1) // (m - 1))


def min_select(
    scores: np.ndarray, labels: np.ndarray, per_class: Budget, ids: Ids = None
) -> np.ndarray:
    """The ``m`` easiest images of every class."""
    return _by_rank(scores, labels, per_class, ids, lambda n, m: np.arange(m))


def max_select(
    scores: np.ndarray, labels: np.ndarray, per_class: Budget, ids: Ids = None
) -> np.ndarray:
    """The ``m`` hardest images of every class."""
    return _by_rank(scores, labels, per_class, ids, lambda n, m: np.arange(n - m, n))


def medium_select(
    scores: np.ndarray, labels: np.ndarray, per_class: Budget, ids: Ids = None
) -> np.ndarray:
    """The ``m`` contiguous ranks around each class's median, from rank ``(n - m) // 2``."""
    return _by_rank(scores, labels, per_class, ids, lambda n, m: np.arange(m) + (n - m) // 2)


def random_select(labels: np.ndarray, per_class: Budget, seed: int) -> np.ndarray:
    """Uniform sample per class; class ``c`` draws from ``default_rng([seed, c])``, so one
    class's pick does not depend on the others."""

    def pick(c: int, members: np.ndarray, m: int) -> np.ndarray:
        return members[np.random.default_rng([seed, c]).choice(len(members), m, replace=False)]

    return _select(labels, per_class, pick)


def _sq_dist(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    return ((x - point) ** 2).sum(axis=1)


def _by_features(
    features: Features, labels: np.ndarray, per_class: Budget, greedy: Callable[[np.ndarray, int], list[int]], description: str
) -> np.ndarray:
    """Apply ``greedy(x, m)`` to the float32 features ``x`` of every class larger than its budget, one class at a time.

    Only a class's rows are ever gathered, so the working set is one class, never a (float64) copy of all N rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    budgets = _budgets(labels, per_class)
    picked = int(((np.bincount(labels, minlength=len(budgets)) > budgets) & (budgets > 0)).sum())
    with progress_bar(description, total=picked) as advance:

        def pick(c: int, members: np.ndarray, m: int) -> np.ndarray:
            advance()
            return members[greedy(np.asarray(features[members], dtype=np.float32), m)]

        return _select(labels, per_class, pick)


def _kcenter(x: np.ndarray, m: int) -> list[int]:
    chosen = [int(np.argmin(_sq_dist(x, x.mean(axis=0))))]
    dist = np.full(len(x), np.inf, dtype=x.dtype)
    for _ in range(m - 1):
        dist = np.minimum(dist, _sq_dist(x, x[chosen[-1]]))
        dist[chosen[-1]] = -np.inf  # not 0: a duplicate of a chosen point must beat the point
        chosen.append(int(np.argmax(dist)))
    return chosen


def _herding(x: np.ndarray, m: int) -> list[int]:
    mean, total, chosen = x.mean(axis=0), np.zeros(x.shape[1], dtype=x.dtype), []
    for t in range(m):
        gap = _sq_dist((total + x) / (t + 1), mean)
        gap[chosen] = np.inf
        chosen.append(int(np.argmin(gap)))
        total += x[chosen[-1]]
    return chosen


def kcenter_select(features: Features, labels: np.ndarray, per_class: Budget) -> np.ndarray:
    """Greedy k-center per class (Sener & Savarese, 2018) on Euclidean distance, in float32.

    Starts from the member nearest the class mean, then adds the member farthest from the
    chosen set; ties go to the lowest position.
    """
    return _by_features(features, labels, per_class, _kcenter, "kcenter")


def herding_select(features: Features, labels: np.ndarray, per_class: Budget) -> np.ndarray:
    """Herding per class (Welling, 2009, as used by iCaRL), in float32.

    Each step adds the member that brings the chosen set's mean closest to the class mean;
    ties go to the lowest position.
    """
    return _by_features(features, labels, per_class, _herding, "herding")


def auto_interval(class_sizes: Sequence[int], per_class: Budget) -> int:
    """``max(1, round(0.75 · mean class size / mean budget))`` over the classes with images; on ImageNet 96 for 10 per class."""
    sizes = np.asarray(class_sizes, dtype=np.float64)
    budgets = np.broadcast_to(np.asarray(per_class, dtype=np.float64), sizes.shape)
    present = sizes > 0
    budget = float(budgets[present].mean()) if present.any() else 0.0
    if budget <= 0:
        raise ValueError("the automatic interval needs a positive per-class budget")
    return max(1, round(0.75 * float(sizes[present].mean()) / budget))


def select(
    name: str,
    *,
    scores: np.ndarray | None,
    labels: np.ndarray,
    per_class: Budget,
    ids: Ids = None,
    k: int | None = None,
    seed: int = 0,
    features: Features | None = None,
) -> np.ndarray:
    """Run the selector called ``name`` (one of ``SELECTORS``) on the inputs it needs."""
    if name not in SELECTORS:
        raise UserError(f"unknown selector {name!r}; choose one of: {', '.join(SELECTORS)}")
    if name in ("kcenter", "herding"):
        if features is None:
            raise UserError(f"selector {name!r} needs image features (pooled visual embeddings)")
        selector = kcenter_select if name == "kcenter" else herding_select
        return selector(features, labels, per_class)
    if name == "random":
        return random_select(labels, per_class, seed)
    if scores is None:
        raise UserError(f"selector {name!r} needs difficulty scores")
    if name == "interval":
        if k is None or k < 1:
            raise UserError(f"selector 'interval' needs an interval k >= 1, got {k}")
        return interval_select(scores, labels, per_class, k, ids)
    ranked = {"min": min_select, "max": max_select, "medium": medium_select}[name]
    return ranked(scores, labels, per_class, ids)
