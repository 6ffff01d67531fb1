"""Sampling a ``SearchSpace`` through an Optuna trial (define-by-run, conditions honoured)."""

from __future__ import annotations

from typing import Any

import optuna

from search_space.dimensions import Choices, Fixed, FloatRange, IntRange
from search_space.spec import SearchSpace

FIXED_PARAMS_ATTR = "fixed_params"
"""The trial user attribute that holds the trial's active fixed values."""


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The whole configuration of ``trial``: every active parameter of ``space``, fixed
    and sampled, in the space's order.

    Only searched parameters are asked of ``trial`` (``suggest_*``), so in Optuna and the
    dashboard ``trial.params`` holds what the study searches, and importance and parameter
    plots list no fixed parameter; the active fixed values travel with the trial as its
    ``fixed_params`` user attribute. Conditions are decided with fixed and sampled values
    alike (``optimizer`` fixed to ``momentum`` makes ``momentum`` active); inactive
    parameters (``momentum`` without ``optimizer: momentum``, ...) do not appear.
    """
    params: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for name, dim in space.dimensions:
        if not SearchSpace.is_active(name, params, space.family):
            continue
        if isinstance(dim, Fixed):
            params[name] = fixed[name] = dim.value
        elif isinstance(dim, Choices):
            params[name] = trial.suggest_categorical(name, list(dim.choices))
        elif isinstance(dim, IntRange):
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
        elif isinstance(dim, FloatRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    trial.set_user_attr(FIXED_PARAMS_ATTR, fixed)
    return params
