"""Selectors and budgets: exact picks against independent references, and budget parsing."""

import math

import numpy as np
import pytest

from d2c_pack.core.errors import UserError
from d2c_pack.selection.budget import parse_budget
from d2c_pack.selection.selectors import (
    SELECTORS,
    auto_interval,
    difficulty_ranks,
    herding_select,
    interval_select,
    kcenter_select,
    max_select,
    medium_select,
    min_select,
    random_select,
    select,
)

IMAGENET_SIZES = [1282] * 167 + [1281] * 833  # 1,281,167 images in 1000 classes
DIGITS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn digits, 1797 images
RANKED = {"min": min_select, "max": max_select, "medium": medium_select}


def shuffled_classes(sizes, seed=0, ties=False):
    """Labels for classes of ``sizes`` in random order, scores, and unique string ids."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    scores = rng.integers(0, 4, len(labels)).astype(float) if ties else rng.random(len(labels))
    ids = [f"img{i:05d}" for i in rng.permutation(len(labels))]
    return scores, labels, ids


def ranked_members(scores, labels, c, ids=None):
    """Members of class ``c`` from easiest to hardest, ties by id then index, with sorted()."""
    members = [i for i in range(len(labels)) if labels[i] == c]
    return sorted(members, key=lambda i: (scores[i], ids[i] if ids else "", i))


def pick_ranks(scores, labels, ranks_by_class, ids=None):
    return sorted(
        ranked_members(scores, labels, c, ids)[r]
        for c, ranks in ranks_by_class.items()
        for r in ranks
    )


def test_interval_takes_every_kth_rank_per_class():
    scores, labels, ids = shuffled_classes([40, 23, 57, 9])
    every_4th = [0, 4, 8, 12, 16]
    # class 3 has 9 images: 4·4 ≥ 9, so its stride shrinks to (9-1)//4 = 2
    expected = pick_ranks(
        scores, labels, {0: every_4th, 1: every_4th, 2: every_4th, 3: [0, 2, 4, 6, 8]}
    )
    for per_class in (5, [5, 5, 5, 5]):
        got = interval_select(scores, labels, per_class, k=4)
        assert got.dtype == np.int64
        assert got.tolist() == expected


def test_interval_class_edge_cases():
    scores = np.random.default_rng(1).permutation(25).astype(float)  # index with score r has rank r
    labels = np.zeros(25, dtype=int)
    by_rank = np.argsort(scores)

    def ranks(m, k):
        return np.sort(scores[interval_select(scores, labels, [m], k)]).astype(int).tolist()

    assert ranks(10, 5) == list(range(0, 20, 2))  # (10-1)·5 ≥ 25 → stride 2
    assert ranks(5, 5) == [0, 5, 10, 15, 20]  # (5-1)·5 < 25: the stride stays
    assert ranks(1, 7) == [0]
    assert ranks(25, 3) == ranks(30, 3) == list(range(25))
    assert ranks(0, 3) == []
    assert ranks(13, 5) == list(range(0, 25, 2))  # stride (25-1)//12 = 2
    assert interval_select(scores, labels, [2], 3).tolist() == sorted(by_rank[[0, 3]])
    with pytest.raises(ValueError):
        interval_select(scores, labels, [2], 0)


def test_interval_budget_zero_for_one_class_only():
    scores, labels, _ = shuffled_classes([10, 10])
    got = interval_select(scores, labels, [0, 3], 2)
    assert (labels[got] == 1).all() and got.tolist() == pick_ranks(scores, labels, {1: [0, 2, 4]})


def test_ties_break_by_source_id_then_index():
    scores = np.ones(6)
    labels = np.zeros(6, dtype=int)
    ids = ["b", "a", "d", "c", "f", "e"]
    assert min_select(scores, labels, 3, ids).tolist() == [0, 1, 3]  # a, b, c
    assert min_select(scores, labels, 3).tolist() == [0, 1, 2]
    assert min_select(np.ones(3), np.zeros(3, dtype=int), 2, ["x", "x", "a"]).tolist() == [0, 2]
    assert difficulty_ranks(scores, labels, ids).tolist() == [1, 0, 3, 2, 5, 4]


@pytest.mark.parametrize("name", ["interval", "min", "max", "medium"])
def test_rank_selectors_do_not_depend_on_input_order(name):
    scores, labels, ids = shuffled_classes([30, 17, 8], seed=2, ties=True)
    perm = np.random.default_rng(3).permutation(len(labels))

    def run(s, y, i):
        return select(name, scores=s, labels=y, per_class=[6, 6, 6], ids=i, k=3)

    before = {ids[i] for i in run(scores, labels, ids)}
    after = {ids[perm[i]] for i in run(scores[perm], labels[perm], [ids[j] for j in perm])}
    assert before == after and len(before) == 6 + 6 + 6


def test_difficulty_ranks_match_sorted_reference():
    scores, labels, ids = shuffled_classes([12, 7, 20], seed=4, ties=True)
    ranks = difficulty_ranks(scores, labels, ids)
    for c in range(3):
        for rank, i in enumerate(ranked_members(scores, labels, c, ids)):
            assert ranks[i] == rank


def test_min_max_medium_exact_picks():
    # class 0 by rank: 1 (0.1), 5, 3, 0, 4, 6, 2 (0.9); class 1 by rank: 8, 9, 7
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 3.0, 1.0, 2.0])
    labels = np.array([0] * 7 + [1] * 3)
    assert min_select(scores, labels, 2).tolist() == [1, 5, 8, 9]
    assert max_select(scores, labels, 2).tolist() == [2, 6, 7, 9]
    assert medium_select(scores, labels, [3, 2]).tolist() == [0, 3, 4, 8, 9]  # ranks 2..4 and 0..1
    assert medium_select(scores, labels, [2, 1]).tolist() == [0, 3, 9]  # ranks 2..3 and 1
    assert max_select(scores, labels, [0, 5]).tolist() == [7, 8, 9]


def test_random_is_seeded_per_class_and_exact():
    _, labels, _ = shuffled_classes([50, 30, 5], seed=5)
    got = random_select(labels, 10, seed=7)
    assert got.tolist() == random_select(labels, 10, seed=7).tolist()
    assert got.tolist() != random_select(labels, 10, seed=8).tolist()
    assert np.bincount(labels[got]).tolist() == [10, 10, 5]
    assert np.all(np.diff(got) > 0)
    members = np.flatnonzero(labels == 1)
    expected = members[np.random.default_rng([7, 1]).choice(30, 10, replace=False)]
    assert sorted(expected.tolist()) == got[labels[got] == 1].tolist()


def test_random_pick_of_a_class_ignores_the_other_classes():
    labels = np.array([0, 1] * 20)
    pick_1 = random_select(labels, 5, seed=0)
    pick_1 = pick_1[labels[pick_1] == 1]
    # drop half of class 0: class 1's members keep their order, so its pick must not move
    kept = np.flatnonzero((labels == 1) | (np.arange(40) < 20))
    other = random_select(labels[kept], 5, seed=0)
    assert kept[other[labels[kept][other] == 1]].tolist() == pick_1.tolist()


def ref_kcenter(x, m):
    n = len(x)
    mean = [sum(col) / n for col in zip(*x)]
    chosen = [min(range(n), key=lambda i: (math.dist(x[i], mean), i))]
    while len(chosen) < m:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(math.dist(x[i], x[j]) for j in chosen), -i)))
    return chosen


def ref_herding(x, m):
    n, d = len(x), len(x[0])
    mean = [sum(col) / n for col in zip(*x)]
    chosen, total = [], [0.0] * d
    for t in range(m):
        def gap(i):
            return math.dist(mean, [(total[j] + x[i][j]) / (t + 1) for j in range(d)])

        best = min((i for i in range(n) if i not in chosen), key=lambda i: (gap(i), i))
        chosen.append(best)
        total = [total[j] + x[best][j] for j in range(d)]
    return chosen


@pytest.mark.parametrize(
    "selector, reference", [(kcenter_select, ref_kcenter), (herding_select, ref_herding)]
)
def test_feature_selectors_match_brute_force(selector, reference):
    rng = np.random.default_rng(6)
    _, labels, _ = shuffled_classes([15, 9, 4, 12], seed=6)
    features = rng.normal(size=(len(labels), 5)).astype(np.float32)
    features[1] = features[0]  # exact duplicates exercise the tie rules
    features[2] = features[0]
    budgets = [6, 3, 5, 12]
    expected = []
    for c, m in enumerate(budgets):
        members = np.flatnonzero(labels == c)
        x = features[members].astype(float).tolist()
        expected += members[reference(x, m)].tolist() if len(members) > m else members.tolist()
    assert selector(features, labels, budgets).tolist() == sorted(expected)


def test_kcenter_and_herding_with_more_picks_than_distinct_points():
    # after both distinct points are taken every distance is 0: the next pick must be a new member
    features = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = np.zeros(4, dtype=int)
    assert kcenter_select(features, labels, 3).tolist() == [0, 1, 2]
    assert len(set(herding_select(features, labels, 3).tolist())) == 3


def test_herding_mean_is_closer_to_the_class_mean_than_random():
    rng = np.random.default_rng(8)
    herd_gap, random_gap = [], []
    for trial in range(30):
        features = rng.normal(size=(200, 8)) * rng.uniform(0.5, 3, size=8)
        labels = np.zeros(200, dtype=int)
        mean = features.mean(axis=0)
        herd = herding_select(features, labels, 10)
        rand = random_select(labels, 10, trial)
        herd_gap.append(np.linalg.norm(features[herd].mean(axis=0) - mean))
        random_gap.append(np.linalg.norm(features[rand].mean(axis=0) - mean))
    assert np.mean(herd_gap) < 0.5 * np.mean(random_gap)


def test_select_dispatches_and_reports_missing_inputs():
    scores, labels, ids = shuffled_classes([20, 11], seed=9)
    features = np.random.default_rng(9).normal(size=(len(labels), 4))
    kw = dict(scores=scores, labels=labels, per_class=4, ids=ids)
    assert select("interval", k=3, **kw).tolist() == (
        interval_select(scores, labels, 4, 3, ids).tolist()
    )
    for name, fn in RANKED.items():
        assert select(name, **kw).tolist() == fn(scores, labels, 4, ids).tolist()
    assert select("random", seed=3, **kw).tolist() == random_select(labels, 4, 3).tolist()
    for name, fn in [("kcenter", kcenter_select), ("herding", herding_select)]:
        assert select(name, features=features, **kw).tolist() == fn(features, labels, 4).tolist()
    assert len(SELECTORS) == 7
    missing = [("interval", {}), ("interval", {"k": 0}), ("kcenter", {}), ("herding", {})]
    for name, extra in [*missing, ("nope", {})]:
        with pytest.raises(UserError) as err:
            select(name, **kw, **extra)
        assert "\n" not in str(err.value)


def test_auto_interval():
    assert auto_interval(IMAGENET_SIZES, 10) == 96
    assert auto_interval(IMAGENET_SIZES, 100) == 10
    assert auto_interval(IMAGENET_SIZES, [10] * 1000) == 96
    assert auto_interval([10, 20], 5) == 2  # 0.75·15/5 = 2.25
    assert auto_interval([100, 100], [4, 6]) == 15
    assert auto_interval([10, 10], 50) == 1  # never below 1


def test_parse_budget_forms():
    assert sum(IMAGENET_SIZES) == 1_281_167
    assert parse_budget("0.8%", IMAGENET_SIZES) == [10] * 1000
    assert parse_budget("10k", IMAGENET_SIZES) == [10] * 1000
    assert parse_budget(" 10 / CLASS ", IMAGENET_SIZES) == [10] * 1000
    # 500 extra images go to the largest classes, ties to the lower index
    assert parse_budget("1.5K", IMAGENET_SIZES) == [2] * 500 + [1] * 500
    assert parse_budget("1k", DIGITS_SIZES) == [100] * 10
    assert parse_budget("10/class", DIGITS_SIZES) == [10] * 10
    assert parse_budget("1797", DIGITS_SIZES) == [179, 180, 179, 180, 180, 180, 180, 180, 179, 180]
    assert parse_budget("25", [5, 9, 9, 3]) == [6, 7, 6, 6]
    assert parse_budget("26", [5, 9, 9, 3]) == [6, 7, 7, 6]
    assert parse_budget("1%", [5, 9, 9, 3]) == [1, 1, 1, 1]  # round(0.065) → at least 1
    assert parse_budget("100%", [5, 9, 9, 3]) == [6, 6, 6, 6]  # round(26/4), clipped later
    assert parse_budget("2", [5, 9, 9, 3]) == [0, 1, 1, 0]


BAD_BUDGETS = ["0", "-1", "0%", "101%", "abc", "", "10/klass", "1.5/class", "0/class", "1.5"]


@pytest.mark.parametrize("text", BAD_BUDGETS)
def test_parse_budget_rejects_bad_text_in_one_line(text):
    with pytest.raises(UserError) as err:
        parse_budget(text, DIGITS_SIZES)
    message = str(err.value)
    assert "\n" not in message and repr(text) in message
    assert "0.8%" in message and "10k" in message and "10/class" in message


def test_parse_budget_rejects_totals_beyond_the_source_and_no_classes():
    for text in ("20000", "10k"):
        with pytest.raises(UserError, match="exceeds the 1797 images of the source") as err:
            parse_budget(text, DIGITS_SIZES)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="budget 20000 exceeds"):
        parse_budget("20000", DIGITS_SIZES)
    with pytest.raises(UserError, match="no classes"):
        parse_budget("10/class", [])
