"""An example custom model family: multinomial logistic regression (one dense layer).

The service calls nothing here; a worker imports this module when it leases a trial of a
study whose ``model.family`` is ``linear``, and calls ``linear`` to build the model. The
trial's parameters arrive as a dict: use the ones that mean something for the model (here
``dropout_rate`` on the inputs and ``kernel_initializer``); the worker applies the
optimizer, learning rate, schedule, batch size and clipping itself when it compiles and fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from search_space.keras_builder import kernel_initializer


def linear(
    params: Mapping[str, Any],
    *,
    n_features: int,
    n_outputs: int,
    image_shape: tuple[int, int, int] | None,
    seed: int | None,
) -> keras.Model:
    """Flat feature rows -> logits (no output activation: the loss applies it)."""
    del image_shape  # rows are flat whatever the data set; images are pixels here
    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    rate = float(params.get("dropout_rate", 0.0))
    if rate > 0:
        x = keras.layers.Dropout(rate, seed=seed, name="input_dropout")(x)
    init = kernel_initializer(str(params.get("kernel_initializer", "glorot_uniform")), seed)
    outputs = keras.layers.Dense(n_outputs, kernel_initializer=init, name="logits")(x)
    return keras.Model(inputs, outputs, name="linear")
