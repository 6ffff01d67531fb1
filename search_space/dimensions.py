"""The value objects of a search space: one ``Dimension`` per parameter (searched as a
``FloatRange``, ``IntRange`` or ``Choices``, or ``Fixed``), and the ``Problem`` /
``SpaceError`` a parser reports when a spec is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where, what was given, and what is allowed."""

    loc: tuple[str | int, ...]
    msg: str
    input: Any

    @property
    def field(self) -> str:
        return ".".join(str(part) for part in self.loc)

    def __str__(self) -> str:
        return f"{self.field} {self.msg}, got {_show(self.input)}"


class SpaceError(ValueError):
    """A search space or fixed value is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _show(value: Any) -> str:
    """A value as the spec's JSON would spell it, for error messages."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 256:  # str() of a huge int raises
        return f"an integer of {value.bit_length()} bits"
    return str(value)


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step != 1:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Choices:
    choices: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True)
class Fixed:
    value: Any


Dimension = FloatRange | IntRange | Choices | Fixed
