"""A study's search space: validated value objects with a JSON round trip.

``SearchSpace.parse(search_space, fixed)`` takes the two JSON objects of a study
submission, checks every name, range and value against the documented parameters
(``params.PARAMS``) and returns the resolved space: every documented parameter is either
searched (a ``FloatRange``, ``IntRange`` or ``Choices``) or fixed (``Fixed``), the value
objects of ``search_space.dimensions``. Anything wrong raises ``SpaceError`` listing every
problem with its field path, the offending value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_space.dimensions import (
    Choices,
    Dimension,
    Fixed,
    FloatRange,
    IntRange,
    Problem,
    SpaceError,
    _show,
)
from search_space.params import PARAMS, PARAMS_BY_NAME, SEARCH, ParamDef
from search_space.sanity import sane_params
from search_space.values import allowed_text, divisible, invalid, is_number, on_step

__all__ = [
    "MAX_CHOICES",
    "MAX_STEPS",
    "Choices",
    "Dimension",
    "Fixed",
    "FloatRange",
    "IntRange",
    "Problem",
    "SearchSpace",
    "SpaceError",
]

MAX_CHOICES = 64
"""The most choices a categorical parameter may list."""
MAX_STEPS = 10**9
"""A stepped range holds at most this many values (a tiny step is a mistake)."""


def _parse_numeric(
    p: ParamDef, raw: Any, loc: tuple[str | int, ...]
) -> tuple[Dimension | None, list[Problem]]:
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        return None, [Problem(loc, 'must be an object like {"low": .., "high": ..}', raw)]
    extra = sorted(set(raw) - {"low", "high", "log", "step"})
    for key in extra:
        problems.append(
            Problem((*loc, key), "is not a range field (allowed: low, high, log, step)", raw[key])
        )
    d_low, d_high, _ = p.default_range
    low = raw.get("low", d_low)
    high = raw.get("high", d_high)
    log = raw.get("log", False)
    step = raw.get("step")
    for key, value in (("low", low), ("high", high)):
        why = invalid(p, value)
        if why is not None:
            problems.append(Problem((*loc, key), why, value))
    if not isinstance(log, bool):
        problems.append(Problem((*loc, "log"), "must be true or false", log))
    if step is not None:
        want_int = p.kind == "int"
        if not is_number(step) or (want_int and not isinstance(step, int)) or step <= 0:
            kind = "a positive integer" if want_int else "a positive number"
            problems.append(Problem((*loc, "step"), f"must be {kind}", step))
    if problems:
        return None, problems
    if low > high:
        problems.append(Problem((*loc, "low"), f"must be <= high ({_show(high)})", low))
    if log is True and low <= 0:
        problems.append(Problem((*loc, "low"), "must be > 0 when log is true", low))
    if log is True and step is not None and not (p.kind == "int" and step == 1):
        problems.append(
            Problem(
                (*loc, "step"),
                "cannot be combined with log: true (except step 1 for an integer)",
                step,
            )
        )
    if step is not None and not problems and (high - low) / step > MAX_STEPS:
        problems.append(
            Problem(
                (*loc, "step"),
                f"is too small: [low, high] would hold more than {MAX_STEPS} steps",
                step,
            )
        )
    elif step is not None and not problems and not divisible(high, low, step):
        problems.append(
            Problem(
                (*loc, "high"),
                f"must be low ({_show(low)}) plus a whole number of steps ({_show(step)})",
                high,
            )
        )
    if problems:
        return None, problems
    if p.kind == "int":
        return IntRange(int(low), int(high), log, int(step) if step is not None else 1), []
    return FloatRange(float(low), float(high), log, float(step) if step is not None else None), []


def _parse_choices(
    p: ParamDef, raw: Any, loc: tuple[str | int, ...]
) -> tuple[Dimension | None, list[Problem]]:
    if not isinstance(raw, Mapping):
        return None, [Problem(loc, 'must be an object like {"choices": [...]}', raw)]
    problems = [
        Problem(
            (*loc, key), "is not a field of a categorical parameter (allowed: choices)", raw[key]
        )
        for key in sorted(set(raw) - {"choices"})
    ]
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.append(
            Problem((*loc, "choices"), f"must be a non-empty list of {allowed_text(p)}", choices)
        )
        return None, problems
    if len(choices) > MAX_CHOICES:
        problems.append(
            Problem(
                (*loc, "choices"),
                f"must list at most {MAX_CHOICES} values",
                f"{len(choices)} values",
            )
        )
        return None, problems
    for i, value in enumerate(choices):
        why = invalid(p, value)
        if why is not None:
            problems.append(Problem((*loc, "choices", i), why, value))
    if not problems and len(set(map(repr, choices))) != len(choices):
        problems.append(Problem((*loc, "choices"), "must not repeat a value", choices))
    return (None if problems else Choices(tuple(choices))), problems


def _default_dimension(p: ParamDef) -> Dimension:
    if p.default is not SEARCH:
        return Fixed(p.default)
    if p.kind == "categorical":
        return Choices(tuple(p.default_range))
    low, high, log = p.default_range
    if p.kind == "int":
        return IntRange(int(low), int(high), bool(log))
    return FloatRange(float(low), float(high), bool(log))


@dataclass(frozen=True)
class SearchSpace:
    """Every documented parameter, searched or fixed, in dependency order."""

    dimensions: tuple[tuple[str, Dimension], ...]
    family: str = "mlp"

    @classmethod
    def parse(
        cls,
        search_space: Mapping[str, Any] | None,
        fixed: Mapping[str, Any] | None,
        *,
        family: str = "mlp",
    ) -> SearchSpace:
        """Validate a study's ``search_space`` and ``fixed`` objects for a model family.

        Raises:
            SpaceError: with one ``Problem`` per invalid name, field or value.
        """
        search_space = search_space or {}
        fixed = fixed or {}
        problems: list[Problem] = []
        names = ", ".join(PARAMS_BY_NAME)
        for section, given in (("search_space", search_space), ("fixed", fixed)):
            if not isinstance(given, Mapping):
                problems.append(Problem((section,), "must be an object", given))
                continue
            if len(given) > len(PARAMS):  # more than there are: not worth listing each
                problems.append(
                    Problem(
                        (section,),
                        f"names {len(given)} parameters; there are {len(PARAMS)} (known: {names})",
                        f"{len(given)} names",
                    )
                )
                continue
            for name in given:
                if name not in PARAMS_BY_NAME:
                    problems.append(
                        Problem((section, name), f"is not a known parameter (known: {names})", name)
                    )
            for name in given:
                p = PARAMS_BY_NAME.get(name)
                if p is not None and not p.applies_to(family):
                    problems.append(
                        Problem(
                            (section, name),
                            f"applies to the model families "
                            f"{', '.join(p.families or ())} only, not {family}",
                            given[name],
                        )
                    )
        if problems:
            raise SpaceError(problems)
        for name in search_space:
            if name in fixed:
                problems.append(
                    Problem(
                        ("fixed", name),
                        "is also in search_space; a parameter is either searched or fixed",
                        fixed[name],
                    )
                )
        dims: list[tuple[str, Dimension]] = []
        for p in PARAMS:
            dim: Dimension | None
            if p.name in fixed:
                value = fixed[p.name]
                why = invalid(p, value)
                if why is not None:
                    problems.append(Problem(("fixed", p.name), why, value))
                    continue
                dim = Fixed(value)
            elif p.name in search_space:
                loc = ("search_space", p.name)
                raw = search_space[p.name]
                if p.kind == "categorical":
                    dim, found = _parse_choices(p, raw, loc)
                else:
                    dim, found = _parse_numeric(p, raw, loc)
                problems.extend(found)
                if dim is None:
                    continue
            else:
                dim = _default_dimension(p)
            dims.append((p.name, dim))
        if problems:
            raise SpaceError(problems)
        space = cls(tuple(dims), family)
        space._check_conditions(search_space)
        return space

    def _check_conditions(self, searched: Mapping[str, Any]) -> None:
        """A searched parameter whose condition can never hold is a mistake in the spec."""
        problems = []
        for name in searched:
            cond = PARAMS_BY_NAME[name].condition
            if cond is not None and not self.can_be_active(name):  # (family checked before)
                possible = self._possible_values(cond.param)
                problems.append(
                    Problem(
                        ("search_space", name),
                        f"is only used when {cond.param} is {_show(cond.value)}, which the spec "
                        f"excludes ({cond.param}: {_show(list(possible))})",
                        searched[name],
                    )
                )
        if problems:
            raise SpaceError(problems)

    def _possible_values(self, name: str) -> tuple[Any, ...]:
        dim = self[name]
        if isinstance(dim, Choices):
            return dim.choices
        if isinstance(dim, Fixed):
            return (dim.value,)
        return ()

    def can_be_active(self, name: str) -> bool:
        """Whether ``name`` applies to the family and some choice of the other parameters
        makes it active."""
        p = PARAMS_BY_NAME[name]
        if not p.applies_to(self.family):
            return False
        return p.condition is None or p.condition.value in self._possible_values(p.condition.param)

    def sane_params(self) -> dict[str, Any]:
        """The sanity run's configuration (``sanity.sane_params``)."""
        return sane_params(self)

    def check_params(self, params: Any, loc: tuple[str | int, ...]) -> list[Problem]:
        """Problems of a set of parameter values (an enqueued trial) against this space:
        unknown or inapplicable names, invalid values, values outside the searched range
        or choices, or different from a fixed value."""
        if not isinstance(params, Mapping):
            return [Problem(loc, "must be an object of parameter values", params)]
        problems = []
        for name, value in params.items():
            where = (*loc, name)
            p = PARAMS_BY_NAME.get(name)
            if p is None or not self.can_be_active(name):
                problems.append(Problem(where, "is not a parameter this study can use", value))
                continue
            why = invalid(p, value)
            dim = self[name]
            if why is None and isinstance(dim, Fixed) and value != dim.value:
                why = f"must equal the fixed value {_show(dim.value)}"
            elif why is None and isinstance(dim, Choices) and value not in dim.choices:
                why = "must be one of the study's choices: " + ", ".join(map(_show, dim.choices))
            elif (
                why is None
                and isinstance(dim, FloatRange | IntRange)
                and not (dim.low <= value <= dim.high)
            ):
                why = f"must be within the study's range [{dim.low:g}, {dim.high:g}]"
            elif (
                why is None
                and isinstance(dim, FloatRange | IntRange)
                and dim.step
                and not on_step(value, dim.low, dim.step)
            ):
                why = f"must be {dim.low:g} plus a whole number of steps ({dim.step:g})"
            if why is not None:
                problems.append(Problem(where, why, value))
        return problems

    def __getitem__(self, name: str) -> Dimension:
        for key, dim in self.dimensions:
            if key == name:
                return dim
        raise KeyError(name)

    @staticmethod
    def is_active(name: str, params: Mapping[str, Any], family: str = "mlp") -> bool:
        """Whether ``name`` applies given the values already chosen in ``params``."""
        p = PARAMS_BY_NAME[name]
        if not p.applies_to(family):
            return False
        return p.condition is None or params.get(p.condition.param) == p.condition.value

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The resolved space as ``{"search_space": ..., "fixed": ...}``; ``parse`` reads it."""
        searched: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for name, dim in self.dimensions:
            if not self.can_be_active(name):
                continue
            if isinstance(dim, Fixed):
                fixed[name] = dim.value
            else:
                searched[name] = dim.to_json()
        return {"search_space": searched, "fixed": fixed}
