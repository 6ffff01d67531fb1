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


def _model(family: str = "mlp", **overrides: Any) -> keras.Model:
    return build_model(
        {**BASE, **overrides},
        n_features=64,
        n_outputs=10,
        family=family,
        image_shape=(8, 8, 1),
        seed=0,
    )


def _of(model: keras.Model, cls: type) -> list[Any]:
    return [layer for layer in model.layers if type(layer) is cls]


def test_output_layer_gives_logits() -> None:
    model = _model()
    assert model.layers[-1].get_config()["activation"] == "linear"
    assert model.output_shape == (None, 10)


def test_dropout_rate_sets_every_dropout_layer() -> None:
    rates = [
        layer.rate
        for layer in _model(dropout_rate=0.3).layers
        if isinstance(layer, keras.layers.Dropout)
    ]
    assert rates == [0.3, 0.3]  # one per hidden layer (2 by default)
    assert not any(
        isinstance(layer, keras.layers.Dropout) for layer in _model(dropout_rate=0.0).layers
    )


@pytest.mark.parametrize(
    ("name", "cls", "stddev"),
    [
        ("glorot_uniform", "GlorotUniform", None),
        ("he_normal", "HeNormal", None),
        ("truncated_normal", "TruncatedNormal", 0.1),
        ("random_normal", "RandomNormal", 1.0),
        ("orthogonal", "Orthogonal", None),
    ],
)
def test_kernel_initializer(name: str, cls: str, stddev: float | None) -> None:
    dense = _model(kernel_initializer=name).get_layer("dense_0")
    init = dense.kernel_initializer
    assert type(init).__name__ == cls
    if stddev is not None:
        assert init.get_config()["stddev"] == stddev


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", keras.optimizers.SGD),
        ("adam", keras.optimizers.Adam),
        ("rmsprop", keras.optimizers.RMSprop),
        ("adagrad", keras.optimizers.Adagrad),
        ("adadelta", keras.optimizers.Adadelta),
    ],
)
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
    (callback,) = schedule_callbacks({**BASE, "lr_schedule": "exponential", "lr_decay_rate": 0.9})
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


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid"])
def test_activation_of_every_hidden_layer(activation: str) -> None:
    acts = _of(_model(activation=activation), keras.layers.Activation)
    assert [a.get_config()["activation"] for a in acts] == [activation, activation]


def test_selu_takes_alpha_dropout() -> None:
    model = _model(activation="selu", dropout_rate=0.2)
    assert len(_of(model, keras.layers.AlphaDropout)) == 2
    assert _of(model, keras.layers.Dropout) == []


def test_batch_norm_adds_normalisation_and_drops_the_bias() -> None:
    with_bn = _model(batch_norm=True)
    assert len(_of(with_bn, keras.layers.BatchNormalization)) == 2
    assert with_bn.get_layer("dense_0").use_bias is False
    assert _of(_model(batch_norm=False), keras.layers.BatchNormalization) == []
    assert _model(batch_norm=False).get_layer("dense_0").use_bias is True


def test_l2_regularises_every_kernel() -> None:
    dense = _of(_model(l2=1e-3), keras.layers.Dense)
    assert len(dense) == 3  # 2 hidden + logits
    for layer in dense:
        assert layer.kernel_regularizer.get_config()["l2"] == pytest.approx(1e-3)
    assert all(
        layer.kernel_regularizer is None for layer in _of(_model(l2=0.0), keras.layers.Dense)
    )


def test_hidden_layers_and_units_shape_the_mlp() -> None:
    model = _model(hidden_layers=3, hidden_units=256)
    hidden = [layer.units for layer in _of(model, keras.layers.Dense)][:-1]
    assert hidden == [256, 128, 64]


@pytest.mark.parametrize(("name", "value"), [("zeros", 0.0), ("small_positive", 0.1)])
def test_bias_initializer(name: str, value: float) -> None:
    model = _model(bias_initializer=name)
    bias = keras.ops.convert_to_numpy(model.get_layer("dense_0").bias)
    assert bias == pytest.approx(value)


def test_clipnorm_goes_to_the_optimizer() -> None:
    assert build_optimizer({**BASE, "clipnorm": 5.0}).get_config()["clipnorm"] == 5.0
    assert build_optimizer({**BASE, "clipnorm": None}).get_config()["clipnorm"] is None


def test_cnn_has_conv_blocks_pooling_and_a_dense_head() -> None:
    model = _model("cnn", activation="elu", batch_norm=True, l2=1e-4, dropout_rate=0.3)
    convs = _of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [32, 64]
    assert all(c.kernel_regularizer is not None and c.use_bias is False for c in convs)
    assert len(_of(model, keras.layers.MaxPooling2D)) == 2
    assert len(_of(model, keras.layers.BatchNormalization)) == 3
    assert [a.get_config()["activation"] for a in _of(model, keras.layers.Activation)] == [
        "elu"
    ] * 3
    assert [d.rate for d in _of(model, keras.layers.Dropout)] == [0.3]
    assert model.output_shape == (None, 10)


def test_cnn_needs_an_image_shape() -> None:
    with pytest.raises(ValueError, match="needs image data"):
        build_model(BASE, n_features=4, n_outputs=3, family="cnn")
