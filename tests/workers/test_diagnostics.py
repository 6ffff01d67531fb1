"""Each finding code from a configuration the notes describe, measured by the probe on a
real (tiny, seeded) Keras model trained on digits; a good configuration carries none of
the alarms. The trials train in this process (``train_trial``), without the service."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from diagnostics.codes import ALARMS, Code
from tests.support import GOOD_TRIAL, trial_lease
from workers.data import Split, load
from workers.training import train_trial

pytestmark = pytest.mark.slow  # trains Keras models in this process

GOOD = GOOD_TRIAL
DEEP_SIGMOID = {
    **GOOD,
    "activation": "sigmoid",
    "hidden_layers": 4,
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "dropout_rate": 0.0,
}


@pytest.fixture(scope="module")
def digits() -> Split:
    return load("digits")


def _findings(data: Split, params: dict[str, Any], epochs: int) -> dict[str, dict[str, Any]]:
    outcome = train_trial(trial_lease(params, epochs=epochs), data, lambda *_: "continue")
    assert outcome.diagnostics_s > 0
    return {f["code"]: f for f in outcome.findings}


def test_a_good_configuration_raises_no_alarm(digits: Split) -> None:
    found = _findings(digits, GOOD, 20)
    assert set(found) <= {Code.OVERFITTING}, found


def test_deep_sigmoid_with_small_weights_vanishes_and_does_not_learn(digits: Split) -> None:
    # 001: sigmoid's derivative is at most 0.25; four layers multiply it towards 0.
    found = _findings(digits, {**DEEP_SIGMOID, "kernel_initializer": "truncated_normal"}, 6)
    assert {Code.VANISHING_GRADIENTS, Code.NOT_LEARNING, Code.UNDERCONFIDENT} <= set(found)
    vanishing = found[Code.VANISHING_GRADIENTS]
    assert vanishing["layer"] == "dense_0"  # the first layer, furthest from the output
    assert vanishing["value"] < vanishing["threshold"] and vanishing["epoch"] == 1


def test_n01_weights_saturate_sigmoid_units(digits: Split) -> None:
    # 004: with N(0, 1) weights |z| >> 1 and sigmoid'(z) is tiny.
    found = _findings(digits, {**DEEP_SIGMOID, "kernel_initializer": "random_normal"}, 4)
    saturated = found[Code.SATURATED_UNITS]
    assert saturated["layer"].startswith("sigmoid_") and saturated["value"] > 0.5


def test_a_huge_step_kills_relu_units(digits: Split) -> None:
    # 003: a unit dies when a large gradient arrives; the net then predicts near chance
    # and its loss stalls there.
    found = _findings(digits, {**GOOD, "learning_rate": 0.5, "dropout_rate": 0.0}, 8)
    assert {Code.DEAD_UNITS, Code.UNDERCONFIDENT, Code.LOSS_STALLED} <= set(found)
    assert found[Code.DEAD_UNITS]["layer"].startswith("relu_")
    assert found[Code.DEAD_UNITS]["epoch"] == 1


def test_sgd_at_learning_rate_10_is_non_finite_and_names_the_layer(digits: Split) -> None:
    params = {**GOOD, "optimizer": "sgd", "learning_rate": 10.0, "dropout_rate": 0.0}
    outcome = train_trial(
        trial_lease({**params, "kernel_initializer": "random_normal"}, epochs=5),
        digits,
        lambda *_: "continue",
    )
    assert outcome.state == "fail"
    (finding,) = [f for f in outcome.findings if f["code"] == Code.NON_FINITE_LOSS]
    assert finding["epoch"] == 1 and finding["layer"] == "dense_0"
    assert "first in layer dense_0" in finding["message"]


def test_a_large_adam_step_makes_the_loss_unstable(digits: Split) -> None:
    found = _findings(digits, {**GOOD, "learning_rate": 0.1, "dropout_rate": 0.0}, 10)
    assert Code.UNSTABLE_LOSS in found


def test_clipping_on_every_probe_is_reported_as_exploding(digits: Split) -> None:
    # N(0, 1) weights under ReLU: the gradients stay far above clipnorm (004: clip, but
    # find out why the gradient is so large).
    params = {
        **GOOD,
        "kernel_initializer": "random_normal",
        "optimizer": "sgd",
        "learning_rate": 0.001,
        "clipnorm": 1.0,
        "dropout_rate": 0.0,
    }
    found = _findings(digits, params, 4)
    assert found[Code.EXPLODING_GRADIENTS]["value"] == 1.0  # clipped at every probe


def test_a_tiny_learning_rate_does_not_learn(digits: Split) -> None:
    found = _findings(digits, {**GOOD, "optimizer": "sgd", "learning_rate": 1e-5}, 5)
    assert Code.NOT_LEARNING in found


def test_a_wide_net_on_40_rows_overfits(digits: Split) -> None:
    tiny = dataclasses.replace(digits, x_train=digits.x_train[:40], y_train=digits.y_train[:40])
    params = {**GOOD, "hidden_units": 512, "hidden_layers": 2, "dropout_rate": 0.0}
    found = _findings(tiny, params, 40)
    assert set(found) == {Code.OVERFITTING}
    assert "validation loss" in found[Code.OVERFITTING]["message"]


def test_the_probe_follows_the_trial_to_where_it_was_pruned(digits: Split) -> None:
    outcome = train_trial(
        trial_lease(GOOD, epochs=20), digits, lambda e, *_: "prune" if e == 3 else "continue"
    )
    assert outcome.state == "pruned"
    assert outcome.diagnostics_s > 0
    assert not {f["code"] for f in outcome.findings} & ALARMS


def test_diagnostics_off_measures_nothing(digits: Split) -> None:
    job = trial_lease({**GOOD, "learning_rate": 0.5}, epochs=2).model_copy(
        update={"diagnostics": False}
    )
    outcome = train_trial(job, digits, lambda *_: "continue")
    assert outcome.findings == [] and outcome.diagnostics_s == 0


def test_a_gradient_norm_growing_without_bound_is_exploding() -> None:
    # The rule on the probe's own measurements (no training can be this reliably bad).
    import numpy as np

    from diagnostics.probe import Probe, _Sample

    probe = Probe(np.zeros((4, 2), "float32"), np.zeros(4), epochs=9, n_classes=2, clipnorm=None)

    def sample(epoch: int, norm: float) -> _Sample:
        return _Sample(epoch, {"dense_0": 0.1}, 0.1, norm, norm)

    probe.samples = [sample(1, 1.0), sample(5, 50.0)]
    assert not probe.findings()  # 50x: growing, not yet without bound
    probe.samples.append(sample(9, 500.0))
    (finding,) = probe.findings()
    assert finding["code"] == Code.EXPLODING_GRADIENTS and finding["epoch"] == 9
    assert "500x the first probe's" in finding["message"]
    probe.samples = [sample(1, 2e4)]
    assert [f["code"] for f in probe.findings()] == [Code.EXPLODING_GRADIENTS]


def test_a_model_the_probe_cannot_read_still_trains() -> None:
    # A probe batch of the wrong width stands for a custom model the probe cannot feed:
    # the measurement fails, is logged, and training goes on undisturbed.
    import keras
    import numpy as np

    from diagnostics.probe import Probe

    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, "relu")(inputs)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.default_rng(0).normal(size=(32, 2)), np.arange(32) % 2
    probe = Probe(np.zeros((8, 3)), y[:8], epochs=4, n_classes=2, clipnorm=None)
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[probe])
    assert len(history.history["loss"]) == 4
    assert probe.broken and probe.samples == [] and probe.seconds > 0
    assert all(f["code"] != Code.VANISHING_GRADIENTS for f in probe.findings())
