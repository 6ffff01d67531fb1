"""Checking one value against a documented parameter (``params.ParamDef``): its type, its
bounds or allowed values, and whether it lies on a range's steps. The parser of a spec
and the check of an enqueued trial's values share these."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from search_space.dimensions import _show
from search_space.params import ParamDef


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, and not an int too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_element(p: ParamDef, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``p``, or None."""
    if p.kind == "float":
        if not is_number(value):
            return "must be a finite number"
        assert p.bounds is not None
        return p.bounds.check(float(value))
    if p.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        assert p.bounds is not None
        return p.bounds.check(value)
    # categorical
    if p.element == "str" or p.element == "bool":
        assert p.allowed is not None
        if value not in p.allowed or type(value) is not type(p.allowed[0]):
            return "must be one of " + ", ".join(_show(a) for a in p.allowed)
        return None
    if p.element == "float_or_none" and value is None:
        return None
    if p.element == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be an integer"
    if p.element == "float_or_none" and not is_number(value):
        return "must be null or a finite number"
    assert p.bounds is not None
    return p.bounds.check(value)  # no float(): a huge int would overflow


def invalid(p: ParamDef, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``p``, completed with what is allowed; None
    when it is valid."""
    why = _check_element(p, value)
    if why is None or p.allowed is not None:
        return why
    return f"{why} ({allowed_text(p)})"


def allowed_text(p: ParamDef) -> str:
    """What values ``p`` takes, in words."""
    if p.allowed is not None:
        return "one of " + ", ".join(_show(a) for a in p.allowed)
    assert p.bounds is not None
    if p.element == "float_or_none":
        return f"null or a number in {p.bounds.describe()}"
    kind = "an integer" if p.kind == "int" or p.element == "int" else "a number"
    return f"{kind} in {p.bounds.describe()}"


def divisible(high: float, low: float, step: float) -> bool:
    """Whether ``high - low`` is a whole number of steps, checked in decimal as Optuna does
    (it would otherwise narrow the range and warn on every trial)."""
    exact = (Decimal(str(high)) - Decimal(str(low))) / Decimal(str(step))
    return exact == exact.to_integral_value()


def on_step(value: float, low: float, step: float) -> bool:
    """Whether ``value`` is ``low`` plus a whole number of steps (to float precision)."""
    steps = (value - low) / step
    return abs(steps - round(steps)) <= 1e-9 * max(1.0, abs(steps))
