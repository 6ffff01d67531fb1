"""The Keras builder: each brief parameter changes the model or optimizer as documented,
read back from real Keras objects."""

from __future__ import annotations

from typing import Any

import keras
import pytest

from search_space.keras_builder import (
    build_model,
    build_optimizer,
    hidden_widths,
    schedule_callbacks,
)

BASE: dict[str, Any] = {
    "learning_rate": 0.01,
    "optimizer": "adam",
    "lr_schedule": "constant",
    "dropout_rate": 0.25,
    "kernel_initializer": "glorot_uniform",
}


def _model(**overrides: Any) -> keras.Model:
    return build_model({**BASE, **overrides}, input_shape=(64,), n_outputs=10, seed=0)


def test_output_layer_gives_logits() -> None:
    model = _model()
    assert model.layers[-1].get_config()["activation"] == "linear"
    assert model.output_shape == (None, 10)


def test_dropout_rate_sets_every_dropout_layer() -> None:
    rates = [layer.rate for layer in _model(dropout_rate=0.3).layers
             if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.3, 0.3]  # one per hidden layer (2 by default)
    assert not any(isinstance(layer, keras.layers.Dropout)
                   for layer in _model(dropout_rate=0.0).layers)


@pytest.mark.parametrize(("name", "cls", "stddev"), [
    ("glorot_uniform", "GlorotUniform", None),
    ("he_normal", "HeNormal", None),
    ("truncated_normal", "TruncatedNormal", 0.1),
    ("random_normal", "RandomNormal", 1.0),
    ("orthogonal", "Orthogonal", None),
])
def test_kernel_initializer(name: str, cls: str, stddev: float | None) -> None:
    dense = _model(kernel_initializer=name).get_layer("dense_0")
    init = dense.kernel_initializer
    assert type(init).__name__ == cls
    if stddev is not None:
        assert init.get_config()["stddev"] == stddev


@pytest.mark.parametrize(("name", "cls"), [
    ("sgd", keras.optimizers.SGD), ("adam", keras.optimizers.Adam),
    ("rmsprop", keras.optimizers.RMSprop), ("adagrad", keras.optimizers.Adagrad),
    ("adadelta", keras.optimizers.Adadelta),
])
def test_optimizer_and_learning_rate(name: str, cls: type) -> None:
    opt = build_optimizer({**BASE, "optimizer": name, "learning_rate": 0.003})
    assert isinstance(opt, cls)
    assert opt.get_config()["learning_rate"] == pytest.approx(0.003)


def test_momentum_optimizer_uses_momentum() -> None:
    opt = build_optimizer({**BASE, "optimizer": "momentum", "momentum": 0.8})
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.get_config()["momentum"] == pytest.approx(0.8)
    assert build_optimizer({**BASE, "optimizer": "sgd"}).get_config()["momentum"] == 0.0


def test_exponential_decay_schedule() -> None:
    (callback,) = schedule_callbacks({**BASE, "lr_schedule": "exponential",
                                      "lr_decay_rate": 0.9})
    assert isinstance(callback, keras.callbacks.LearningRateScheduler)
    assert callback.schedule(0, 0.01) == pytest.approx(0.01)
    assert callback.schedule(3, 0.01) == pytest.approx(0.01 * 0.9**3)


def test_plateau_schedule_halves_on_validation_loss() -> None:
    (callback,) = schedule_callbacks({**BASE, "lr_schedule": "plateau"})
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    assert callback.monitor == "val_loss"
    assert callback.factor == 0.5
    assert schedule_callbacks(BASE) == []


def test_hidden_layers_never_widen() -> None:
    assert hidden_widths(256, 3) == [256, 128, 64]
    assert hidden_widths(32, 4) == [32, 16, 16, 16]
