"""Selection: per-class selectors over difficulty scores or features, and budget parsing."""

from d2c_pack.select.budget import parse_budget
from d2c_pack.select.selectors import (
    SELECTORS,
    Selector,
    auto_interval,
    difficulty_ranks,
    herding_select,
    interval_select,
    interval_stride,
    kcenter_select,
    max_select,
    medium_select,
    min_select,
    random_select,
    select,
)

__all__ = [
    "SELECTORS",
    "Selector",
    "auto_interval",
    "difficulty_ranks",
    "herding_select",
    "interval_select",
    "interval_stride",
    "kcenter_select",
    "max_select",
    "medium_select",
    "min_select",
    "parse_budget",
    "random_select",
    "select",
]
