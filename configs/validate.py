"""Range checks for numeric settings, shared by the CLIs and the config dataclasses.

Each check raises a one-line `UserError` naming the setting, the bad value and where it came from (the
command line or a preset file). NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from configs.runtime import UserError


def _number(key: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}={value!r} ({source}): expected a number")
    if not math.isfinite(value):
        raise UserError(f"{key}={value!r} ({source}): must be a finite number (NaN and infinity are refused)")
    return float(value)


def check_finite(key: str, value: Any, source: str) -> None:
    """Any finite number."""
    _number(key, value, source)


def check_positive(key: str, value: Any, source: str) -> None:
    """A finite number > 0."""
    if _number(key, value, source) <= 0:
        raise UserError(f"{key}={value!r} ({source}): must be > 0")


def check_non_negative(key: str, value: Any, source: str) -> None:
    """A finite number >= 0."""
    if _number(key, value, source) < 0:
        raise UserError(f"{key}={value!r} ({source}): must be >= 0")


def check_fraction(key: str, value: Any, source: str) -> None:
    """A finite number in (0, 1] (PCK alpha)."""
    number = _number(key, value, source)
    if not 0 < number <= 1:
        raise UserError(f"{key}={value!r} ({source}): must be in (0, 1]")


def check_probability(key: str, value: Any, source: str) -> None:
    """A finite number in [0, 1]."""
    number = _number(key, value, source)
    if not 0 <= number <= 1:
        raise UserError(f"{key}={value!r} ({source}): must be in [0, 1]")


def at_least(minimum: int) -> Callable[[str, Any, str], None]:
    """A check: an integer >= `minimum`."""

    def check(key: str, value: Any, source: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{key}={value!r} ({source}): must be an integer >= {minimum}")

    return check


def each(check: Callable[[str, Any, str], None]) -> Callable[[str, Any, str], None]:
    """Apply `check` to a value or to every item of a list of values."""

    def check_all(key: str, value: Any, source: str) -> None:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise UserError(f"{key} ({source}): needs at least one value")
        for item in values:
            check(key, item, source)

    return check_all


# evaluation settings (EvalConfig keys and beamsearch's own flags)
EVAL_RULES: dict[str, Callable[[str, Any, str], None]] = {
    "alpha": each(check_fraction),
    "search_alpha": check_fraction,
    "exp1": check_positive,
    "exp2": check_positive,
    "eps": check_positive,
    "long_side": at_least(32),
    "num_workers": at_least(0),
    "sinkhorn_iters": at_least(1),
    "max_pairs": at_least(1),
    "vis_max": at_least(0),
    "cache_mb": check_non_negative,
    "search_cache_mb": check_non_negative,
    "rotate": check_finite,
    "temperature": check_positive,
    "flip_prob": check_probability,
    "patch": at_least(1),
    "beam": at_least(1),
    "depth": at_least(1),
}


def check_values(values: Mapping[str, Any], source: str,
                 rules: Mapping[str, Callable[[str, Any, str], None]] = EVAL_RULES,
                 skip_none: Iterable[str] = ("max_pairs",)) -> None:
    """Check every key of `values` that has a rule; `source` says where the values came from."""
    optional = set(skip_none)
    for key, value in values.items():
        if key in rules and not (value is None and key in optional):
            rules[key](key, value, source)
