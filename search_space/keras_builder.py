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

from search_space.size import CNN_DENSE_UNITS, CNN_FILTERS, hidden_widths, param_value


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


class _Layers:
    """The layer settings shared by every hidden layer of a trial's model."""

    def __init__(self, params: Mapping[str, Any], seed: int | None) -> None:
        self.activation = param_value(params, "activation")
        self.dropout = float(param_value(params, "dropout_rate"))
        self.batch_norm = bool(param_value(params, "batch_norm"))
        l2 = float(param_value(params, "l2"))
        self.regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
        self.kernel_init = param_value(params, "kernel_initializer")
        self.bias_init = param_value(params, "bias_initializer")
        self.seed = seed
        self._n = 0

    def _kernel(self) -> keras.initializers.Initializer:
        self._n += 1
        return kernel_initializer(
            self.kernel_init, None if self.seed is None else self.seed + self._n
        )

    def _finish(self, x: Any, name: str, *, dropout: bool) -> Any:
        if self.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{name}")(x)
        x = keras.layers.Activation(self.activation, name=f"{self.activation}_{name}")(x)
        if dropout and self.dropout > 0:
            # Alpha dropout keeps selu's self-normalising mean and variance.
            layer = keras.layers.AlphaDropout if self.activation == "selu" else keras.layers.Dropout
            x = layer(self.dropout, seed=self.seed, name=f"dropout_{name}")(x)
        return x

    def dense(self, x: Any, width: int, name: str) -> Any:
        """Dense -> batch norm? -> activation -> dropout."""
        x = keras.layers.Dense(
            width,
            kernel_initializer=self._kernel(),
            bias_initializer=bias_initializer(self.bias_init),
            kernel_regularizer=self.regularizer,
            use_bias=not self.batch_norm,  # batch norm's own shift makes a bias redundant
            name=f"dense_{name}",
        )(x)
        return self._finish(x, name, dropout=True)

    def conv(self, x: Any, filters: int, name: str) -> Any:
        """Conv 3x3 -> batch norm? -> activation -> 2x2 max pooling (while the image is big
        enough)."""
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            kernel_initializer=self._kernel(),
            bias_initializer=bias_initializer(self.bias_init),
            kernel_regularizer=self.regularizer,
            use_bias=not self.batch_norm,
            name=f"conv_{name}",
        )(x)
        x = self._finish(x, name, dropout=False)
        if min(x.shape[1], x.shape[2]) >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{name}")(x)
        return x

    def logits(self, x: Any, n_outputs: int) -> Any:
        return keras.layers.Dense(
            n_outputs,
            activation=None,  # logits (or regression values): the loss is applied stably
            kernel_initializer=self._kernel(),
            kernel_regularizer=self.regularizer,
            name="logits",
        )(x)


def build_model(
    params: Mapping[str, Any],
    *,
    n_features: int,
    n_outputs: int,
    family: str = "mlp",
    image_shape: tuple[int, int, int] | None = None,
    seed: int | None = None,
) -> keras.Model:
    """A trial's model, taking flat feature rows.

    - ``mlp``: ``hidden_layers`` dense layers, ``hidden_units`` wide, halving.
    - ``cnn``: the rows reshaped to ``image_shape``, two conv blocks (32 and 64 filters,
      3x3, max pooling), then one dense layer of 128 units.

    Each hidden layer honours activation, batch norm, dropout (alpha dropout with selu),
    kernel and bias initializers and L2; the last layer is linear (logits).
    """
    layers = _Layers(params, seed)
    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    if family == "cnn":
        if image_shape is None:
            raise ValueError("the cnn family needs image data (an image_shape)")
        x = keras.layers.Reshape(image_shape, name="image")(x)
        for i, filters in enumerate(CNN_FILTERS):
            x = layers.conv(x, filters, str(i))
        x = keras.layers.Flatten(name="flatten")(x)
        x = layers.dense(x, CNN_DENSE_UNITS, "head")
    elif family == "mlp":
        widths = hidden_widths(
            int(param_value(params, "hidden_units")), int(param_value(params, "hidden_layers"))
        )
        for i, width in enumerate(widths):
            x = layers.dense(x, width, str(i))
    else:
        raise ValueError(f"unknown model family {family!r}")
    return keras.Model(inputs, layers.logits(x, n_outputs), name=family)


def build_optimizer(params: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """The optimizer named by ``optimizer``, at ``learning_rate``, with ``clipnorm``."""
    name = param_value(params, "optimizer")
    lr = float(param_value(params, "learning_rate"))
    clipnorm = param_value(params, "clipnorm")
    common: dict[str, Any] = {"learning_rate": lr}
    if clipnorm is not None:
        common["clipnorm"] = float(clipnorm)
    if name == "sgd":
        return keras.optimizers.SGD(**common)
    if name == "momentum":
        return keras.optimizers.SGD(momentum=float(param_value(params, "momentum")), **common)
    classes = {
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adadelta": keras.optimizers.Adadelta,
    }
    return classes[name](**common)


def schedule_callbacks(
    params: Mapping[str, Any], *, monitor: str = "val_loss"
) -> list[keras.callbacks.Callback]:
    """Callbacks that apply ``lr_schedule``: exponential decay per epoch
    (``lr = learning_rate * lr_decay_rate ** epoch``), or halving when ``monitor`` (the
    validation loss) stops falling."""
    schedule = param_value(params, "lr_schedule")
    base = float(param_value(params, "learning_rate"))
    if schedule == "exponential":
        rate = float(param_value(params, "lr_decay_rate"))
        return [keras.callbacks.LearningRateScheduler(lambda epoch, _lr: base * rate**epoch)]
    if schedule == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=2, min_lr=base * 1e-3
            )
        ]
    return []
