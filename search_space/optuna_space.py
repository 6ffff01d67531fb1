"""Sampling a ``SearchSpace`` through an Optuna trial (define-by-run, conditions honoured)."""

from __future__ import annotations

from typing import Any

import optuna

from search_space.spec import Choices, Fixed, FloatRange, IntRange, SearchSpace


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for a value of every active parameter of ``space``.

    Fixed values are suggested from a one-value distribution, so every trial in Optuna
    (and the dashboard) carries its whole configuration; inactive parameters (``momentum``
    without ``optimizer: momentum``, ...) are not suggested and do not appear.
    """
    params: dict[str, Any] = {}
    for name, dim in space.dimensions:
        if not SearchSpace.is_active(name, params, space.family):
            continue
        if isinstance(dim, Fixed):
            params[name] = trial.suggest_categorical(name, [dim.value])
        elif isinstance(dim, Choices):
            params[name] = trial.suggest_categorical(name, list(dim.choices))
        elif isinstance(dim, IntRange):
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
        elif isinstance(dim, FloatRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return params
