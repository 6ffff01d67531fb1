"""Model sizes without Keras: the number of weights ``keras_builder.build_model`` creates,
computed from the parameters alone, so the service can bound a study's largest model
before any worker starts TensorFlow.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from search_space.dimensions import Choices, Dimension, Fixed, FloatRange, IntRange
from search_space.params import PARAMS_BY_NAME, SEARCH
from search_space.spec import SearchSpace

# The architecture's constants live here, not in keras_builder (which starts TensorFlow
# when imported); keras_builder builds from them.
CNN_FILTERS = (32, 64)
CNN_DENSE_UNITS = 128
SIZE_PARAMS = ("batch_norm", "hidden_layers", "hidden_units")
"""The only parameters that change a model's weight count."""


def param_value(params: Mapping[str, Any], name: str) -> Any:
    """The trial's value of ``name``, or its documented fixed default."""
    if name in params:
        return params[name]
    default = PARAMS_BY_NAME[name].default
    if default is SEARCH:
        raise KeyError(f"parameters lack {name!r}, which has no fixed default")
    return default


def hidden_widths(first: int, layers: int) -> list[int]:
    """Widths of the hidden layers: halving from ``first``, never below 16 (or ``first``)."""
    floor = min(first, 16)
    return [max(first >> i, floor) for i in range(layers)]


def _layer(n_in: int, n_out: int, batch_norm: bool) -> int:
    """A dense (or conv, with ``n_in`` = kernel area x channels) layer and its batch norm:
    batch norm drops the bias and adds gamma, beta, moving mean and moving variance."""
    return n_in * n_out + (4 * n_out if batch_norm else n_out)


def param_count(
    params: Mapping[str, Any],
    *,
    family: str,
    n_features: int,
    n_outputs: int,
    image_shape: tuple[int, int, int] | None = None,
) -> int:
    """``build_model(params, ...).count_params()`` (non-trainable weights included), without
    building the model.

    Raises:
        ValueError: for a family other than mlp and cnn, or a cnn without a matching
            ``image_shape`` (the builder cannot build those either).
    """
    batch_norm = bool(param_value(params, "batch_norm"))
    if family == "mlp":
        widths = hidden_widths(
            int(param_value(params, "hidden_units")), int(param_value(params, "hidden_layers"))
        )
        total, n_in = 0, n_features
    elif family == "cnn":
        if image_shape is None:
            raise ValueError("the cnn family needs image data (an image_shape)")
        height, width, n_in = image_shape
        if height * width * n_in != n_features:
            raise ValueError(f"image_shape {image_shape} does not hold {n_features} features")
        total = 0
        for filters in CNN_FILTERS:
            total += _layer(9 * n_in, filters, batch_norm)  # 3x3 kernels, "same" padding
            n_in = filters
            if min(height, width) >= 2:  # 2x2 max pooling while the image is big enough
                height, width = height // 2, width // 2
        n_in *= height * width
        widths = [CNN_DENSE_UNITS]
    else:
        raise ValueError(f"unknown model family {family!r}")
    for units in widths:
        total += _layer(n_in, units, batch_norm)
        n_in = units
    return total + _layer(n_in, n_outputs, False)  # the logits keep their bias


def _values(dim: Dimension) -> tuple[Any, ...]:
    """Every value ``dim`` allows (a float range's ends: no size parameter is a float)."""
    if isinstance(dim, Fixed):
        return (dim.value,)
    if isinstance(dim, Choices):
        return dim.choices
    if isinstance(dim, IntRange):
        return tuple(range(dim.low, dim.high + 1, dim.step))
    assert isinstance(dim, FloatRange)
    return (dim.low, dim.high)


def max_param_count(
    space: SearchSpace,
    *,
    n_features: int,
    n_outputs: int,
    image_shape: tuple[int, int, int] | None = None,
) -> int | None:
    """The weight count of the largest model ``space`` can produce, or None for a family
    other than mlp and cnn (custom model families are checked by the workers).

    Every combination of the size parameters is tried rather than their largest values:
    another hidden layer narrows the logits' input, so with many outputs it can shrink the
    model. Only the widest ``hidden_units`` is needed: every width grows with it.
    """
    if space.family not in ("mlp", "cnn"):
        return None
    names = [name for name in SIZE_PARAMS if space.can_be_active(name)]
    options = [_values(space[name]) for name in names]
    if "hidden_units" in names:
        i = names.index("hidden_units")
        options[i] = (max(options[i]),)
    counts = (
        param_count(
            dict(zip(names, combo, strict=True)),
            family=space.family,
            n_features=n_features,
            n_outputs=n_outputs,
            image_shape=image_shape,
        )
        for combo in itertools.product(*options)
    )
    return max(counts)
