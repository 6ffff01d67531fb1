"""The sanity run's configuration: one that should learn, within the study's space.

Before a study's trials, one short run of ``sane_params(space)`` checks that the dataset
and model can learn at all: fixed values as fixed, and for every searched parameter the
value the notes recommend (``SANE``; a learning rate that suits the optimizer,
``SANE_LEARNING_RATE``), taken into the study's range or choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search_space.dimensions import Choices, Fixed, FloatRange, IntRange

if TYPE_CHECKING:
    from search_space.spec import SearchSpace

SANE: dict[str, Any] = {
    "optimizer": "adam",
    "momentum": 0.9,
    "lr_schedule": "constant",
    "lr_decay_rate": 0.99,
    "dropout_rate": 0.0,
    "kernel_initializer": "glorot_uniform",
    "bias_initializer": "zeros",
    "activation": "relu",
    "batch_norm": False,
    "l2": 0.0,
    "batch_size": 64,
    "hidden_layers": 2,
    "hidden_units": 128,
    "clipnorm": None,
}
"""The sanity run's configuration where a study searches a parameter (clamped into it)."""
SANE_LEARNING_RATE = {
    "adam": 1e-3,
    "rmsprop": 1e-3,
    "momentum": 1e-2,
    "sgd": 1e-1,
    "adagrad": 1e-1,
    "adadelta": 1.0,
}
"""The learning rate that suits each optimizer, for the sanity run."""


def _sane_optimizer(space: SearchSpace) -> Any:
    """The optimizer of the sanity run: the fixed one, else adam if the study can use it."""
    optimizer = space["optimizer"]
    if isinstance(optimizer, Fixed):
        return optimizer.value
    if isinstance(optimizer, Choices):
        return "adam" if "adam" in optimizer.choices else optimizer.choices[0]
    return "adam"


def sane_params(space: SearchSpace) -> dict[str, Any]:
    """A configuration that should learn, for the sanity run: fixed values as fixed, and
    for searched parameters the value the notes recommend (adam, a learning rate that
    suits the optimizer, no dropout, no decay, ...), taken into the study's range or
    choices. Only active parameters appear."""
    params: dict[str, Any] = {}
    chosen = _sane_optimizer(space)
    for name, dim in space.dimensions:
        if not space.is_active(name, params, space.family):
            continue
        if isinstance(dim, Fixed):
            params[name] = dim.value
            continue
        wish = SANE.get(name)
        if name == "learning_rate":  # (comes before optimizer, hence `chosen`)
            wish = SANE_LEARNING_RATE[chosen]
        if isinstance(dim, Choices):
            params[name] = wish if wish in dim.choices else dim.choices[0]
        else:
            params[name] = into_range(dim, wish)
    return params


def into_range(dim: FloatRange | IntRange, wish: float | None) -> float:
    """``wish`` (the range's low end if None) taken into the range, on its step if any."""
    low, high = dim.low, dim.high
    value = min(max(wish if wish is not None else low, low), high)
    if isinstance(dim, IntRange):
        return low + (int(value) - low) // dim.step * dim.step
    if dim.step is not None:
        # (float error can put low + k * step just past high)
        return min(low + round((value - low) / dim.step) * dim.step, high)
    return value
