"""``--budget`` text to one image count per class: ``0.8%``, ``10k`` / ``10000`` or ``10/class``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

from d2c_pack.core.errors import UserError

_BUDGET = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))\s*(%|k|/\s*class)?")
_FORMS = "use a percentage like '0.8%', a total like '10k' or '10000', or '10/class'"


def _invalid(text: str, why: str) -> UserError:
    return UserError(f"invalid budget {text!r} ({why}); {_FORMS}")


def parse_budget(text: str, class_sizes: Sequence[int]) -> list[int]:
    """Per-class budgets ``m_c`` for ``text`` over classes of ``class_sizes`` images.

    - ``p%``: ``max(1, round(p/100 · N / C))`` for every class (N images, C classes).
    - ``T`` or ``Tk``: ``T // C`` per class, the remainder +1 to the largest classes (ties:
      lower class index). ``T`` may not exceed N.
    - ``m/class``: ``m`` for every class.

    C counts the classes that have images: a source holding a few of ImageNet's 1,000 classes
    splits its budget among those, and the empty classes get 0. Budgets may exceed a class's
    size; selectors then take that class whole.
    """
    sizes = [int(size) for size in class_sizes]
    present = [c for c, size in enumerate(sizes) if size > 0]
    if not present:
        raise UserError(f"cannot apply budget {text!r}: the source has no {'images' if sizes else 'classes'}")
    n_images, n_classes = sum(sizes), len(present)
    match = _BUDGET.fullmatch(text.strip().lower())
    if match is None:
        raise _invalid(text, "not a budget")
    value, unit = Decimal(match[1]), match[2] or ""
    if unit == "%":
        if not 0 < value <= 100:
            raise _invalid(text, "a percentage must be in (0, 100]")
        return _spread([max(1, round(float(value) / 100 * n_images / n_classes))] * n_classes, present, len(sizes))
    count = value * 1000 if unit == "k" else value
    if count != count.to_integral_value():
        raise _invalid(text, "not a whole number of images")
    if count < 1:
        raise _invalid(text, "the budget must be positive")
    if unit.startswith("/"):
        return _spread([int(count)] * n_classes, present, len(sizes))
    total = int(count)
    if total > n_images:
        raise UserError(f"budget {total} exceeds the {n_images} images of the source")
    base, extra = divmod(total, n_classes)
    budgets = [base] * n_classes
    for slot in sorted(range(n_classes), key=lambda slot: (-sizes[present[slot]], present[slot]))[:extra]:
        budgets[slot] += 1
    return _spread(budgets, present, len(sizes))


def _spread(budgets: list[int], present: list[int], n_classes: int) -> list[int]:
    """Budgets of the classes ``present`` placed at their class indices, 0 for the others."""
    spread = [0] * n_classes
    for c, budget in zip(present, budgets):
        spread[c] = budget
    return spread
