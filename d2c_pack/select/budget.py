"""``--budget`` text to one image count per class: ``0.8%``, ``10k`` / ``10000`` or ``10/class``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

from d2c_pack.errors import UserError

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

    Budgets may exceed a class's size; selectors then take that class whole.
    """
    sizes = [int(size) for size in class_sizes]
    if not sizes:
        raise UserError(f"cannot apply budget {text!r}: the source has no classes")
    n_images, n_classes = sum(sizes), len(sizes)
    match = _BUDGET.fullmatch(text.strip().lower())
    if match is None:
        raise _invalid(text, "not a budget")
    value, unit = Decimal(match[1]), match[2] or ""
    if unit == "%":
        if not 0 < value <= 100:
            raise _invalid(text, "a percentage must be in (0, 100]")
        return [max(1, round(float(value) / 100 * n_images / n_classes))] * n_classes
    count = value * 1000 if unit == "k" else value
    if count != count.to_integral_value():
        raise _invalid(text, "not a whole number of images")
    if count < 1:
        raise _invalid(text, "the budget must be positive")
    if unit.startswith("/"):
        return [int(count)] * n_classes
    total = int(count)
    if total > n_images:
        raise UserError(f"budget {total} exceeds the {n_images} images of the source")
    base, extra = divmod(total, n_classes)
    budgets = [base] * n_classes
    for c in sorted(range(n_classes), key=lambda c: (-sizes[c], c))[:extra]:
        budgets[c] += 1
    return budgets
