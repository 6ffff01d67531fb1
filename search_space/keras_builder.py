"""Keras models, optimizers and learning-rate schedules from a trial's parameters.

Imported only where Keras is wanted (the workers): importing it starts TensorFlow.
The rules of ``search-space.md`` are built in here: the output layer has no activation
(the loss takes logits), later hidden layers are no wider than earlier ones, alpha dropout
goes with ``selu``, ``small_positive`` biases start at 0.1, ``truncated_normal`` has
stddev 0.1 and ``random_normal`` is N(0, 1), the documented bad choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from search_space.params import PARAMS_BY_NAME, SEARCH


def _param(params: Mapping[str, Any], name: str) -> Any:
    """The trial's value of ``name``, or its documented fixed default."""
    if name in params:
        return params[name]
    default = PARAMS_BY_NAME[name].default
    if default is SEARCH:
        raise KeyError(f"trial parameters lack {name!r}, which has no fixed default")
    return default


def kernel_initializer(name: str, seed: int | None) -> keras.initializers.Initializer:
    if name == "truncated_normal":
        return keras.initializers.TruncatedNormal(stddev=0.1, seed=seed)
    if name == "random_normal":
        return keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    classes = {
        "glorot_uniform": keras.initializers.GlorotUniform,
        "glorot_normal": keras.initializers.GlorotNormal,
        "he_normal": keras.initializers.HeNormal,
        "orthogonal": keras.initializers.Orthogonal,
    }
    return classes[name](seed=seed)


def bias_initializer(name: str) -> keras.initializers.Initializer:
    if name == "small_positive":
        return keras.initializers.Constant(0.1)
    return keras.initializers.Zeros()


def hidden_widths(first: int, layers: int) -> list[int]:
    """Widths of the hidden layers: halving from ``first``, never below 16 (or ``first``)."""
    floor = min(first, 16)
    return [max(first >> i, floor) for i in range(layers)]


def build_model(
    params: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    n_outputs: int,
    seed: int | None = None,
) -> keras.Model:
    """An MLP: ``hidden_layers`` x [Dense -> BatchNorm? -> activation -> dropout], then a
    linear output layer of ``n_outputs`` logits (or regression values)."""
    activation = _param(params, "activation")
    dropout = float(_param(params, "dropout_rate"))
    batch_norm = bool(_param(params, "batch_norm"))
    l2 = float(_param(params, "l2"))
    kernel_init = _param(params, "kernel_initializer")
    bias_init = _param(params, "bias_initializer")
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None

    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    widths = hidden_widths(int(_param(params, "hidden_units")),
                           int(_param(params, "hidden_layers")))
    for i, width in enumerate(widths):
        x = keras.layers.Dense(
            width,
            kernel_initializer=kernel_initializer(kernel_init, None if seed is None else seed + i),
            bias_initializer=bias_initializer(bias_init),
            kernel_regularizer=regularizer,
            # Batch norm's own shift makes a bias redundant.
            use_bias=not batch_norm,
            name=f"dense_{i}",
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(activation, name=f"{activation}_{i}")(x)
        if dropout > 0:
            # Alpha dropout keeps selu's self-normalising mean and variance.
            layer = keras.layers.AlphaDropout if activation == "selu" else keras.layers.Dropout
            x = layer(dropout, seed=seed, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(
        n_outputs,
        activation=None,  # logits: the loss applies softmax itself, stably
        kernel_initializer=kernel_initializer(kernel_init, None if seed is None else seed + 99),
        kernel_regularizer=regularizer,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_optimizer(params: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """The optimizer named by ``optimizer``, at ``learning_rate``, with ``clipnorm``."""
    name = _param(params, "optimizer")
    lr = float(_param(params, "learning_rate"))
    clipnorm = _param(params, "clipnorm")
    common: dict[str, Any] = {"learning_rate": lr}
    if clipnorm is not None:
        common["clipnorm"] = float(clipnorm)
    if name == "sgd":
        return keras.optimizers.SGD(**common)
    if name == "momentum":
        return keras.optimizers.SGD(momentum=float(_param(params, "momentum")), **common)
    classes = {
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adadelta": keras.optimizers.Adadelta,
    }
    return classes[name](**common)


def schedule_callbacks(params: Mapping[str, Any]) -> list[keras.callbacks.Callback]:
    """Callbacks that apply ``lr_schedule``: exponential decay per epoch
    (``lr = learning_rate * lr_decay_rate ** epoch``), or halving on a validation plateau."""
    schedule = _param(params, "lr_schedule")
    base = float(_param(params, "learning_rate"))
    if schedule == "exponential":
        rate = float(_param(params, "lr_decay_rate"))
        return [keras.callbacks.LearningRateScheduler(lambda epoch, _lr: base * rate**epoch)]
    if schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2,
                                                  min_lr=base * 1e-3)]
    return []
