"""Training one trial with a real (small, seeded) Keras model on digits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search_space.catalog import BUILTIN_DATASETS
from tests.support import GOOD_TRIAL, trial_lease
from workers import keras_memory
from workers.data import DataSource, Split, load
from workers.training import train_trial

pytestmark = pytest.mark.slow  # trains Keras models in this process

GOOD = GOOD_TRIAL


@pytest.fixture(scope="module")
def digits() -> Split:
    return load("digits")


_job = trial_lease


def test_trains_and_reports_every_epoch(digits: Split) -> None:
    reports: list[tuple[int, float]] = []

    def report(epoch: int, value: float, metrics: dict[str, float]) -> str:
        assert "val_loss" in metrics and "loss" in metrics
        reports.append((epoch, value))
        return "continue"

    outcome = train_trial(_job(GOOD), digits, report)
    assert outcome.state == "complete"
    assert [e for e, _ in reports] == [1, 2, 3]
    assert outcome.value == reports[-1][1]
    assert outcome.value is not None and outcome.value > 0.85
    assert outcome.epochs_run == 3


def test_same_seed_same_result(digits: Split) -> None:
    a = train_trial(_job(GOOD, epochs=2), digits, lambda *_: "continue")
    b = train_trial(_job(GOOD, epochs=2), digits, lambda *_: "continue")
    assert a.history == b.history


def test_a_trial_leaves_no_traced_gradient_behind(digits: Split) -> None:
    """Each traced training step registers a custom gradient in TensorFlow's global
    registry, which holds the step's whole graph (``workers.keras_memory``); freeing the
    trial drops it, so the registry is where it was after any number of trials."""
    for _ in range(2):
        outcome = train_trial(_job(GOOD, epochs=1), digits, lambda *_: "continue")
        assert outcome.state == "complete"
        assert keras_memory.traced_gradients() == 0


def test_non_finite_loss_fails_the_trial_at_once(digits: Split) -> None:
    params = {
        **GOOD,
        "optimizer": "sgd",
        "learning_rate": 10.0,
        "kernel_initializer": "random_normal",
        "dropout_rate": 0.0,
    }
    seen: list[int] = []
    outcome = train_trial(
        _job(params, epochs=5), digits, lambda e, *_: seen.append(e) or "continue"
    )
    assert outcome.state == "fail"
    assert outcome.reason == "non-finite loss at epoch 1"
    assert outcome.epochs_run == 1 and seen == []


def test_prune_answer_stops_training(digits: Split) -> None:
    outcome = train_trial(
        _job(GOOD, epochs=5), digits, lambda e, *_: "prune" if e == 2 else "continue"
    )
    assert outcome.state == "pruned"
    assert outcome.epochs_run == 2


def test_an_exception_in_building_is_a_failed_trial(digits: Split) -> None:
    outcome = train_trial(
        _job({**GOOD, "activation": "no_such_activation"}), digits, lambda *_: "continue"
    )
    assert outcome.state == "fail"
    assert outcome.reason is not None and "no_such_activation" in outcome.reason


def test_thread_count_setting_pins_tensorflow() -> None:
    code = (
        "from workers.training import configure_tensorflow; import tensorflow as tf; "
        "configure_tensorflow(1); "
        "print(tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
    )
    assert out.stdout.split() == ["1", "1"]


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_every_builtin_classification_set_trains(name: str) -> None:
    outcome = train_trial(
        _job({**GOOD, "learning_rate": 0.01}, epochs=5, dataset=name),
        load(name),
        lambda *_: "continue",
    )
    assert outcome.state == "complete", outcome.reason
    assert outcome.value is not None and outcome.value > 0.6  # far above chance


def test_regression_trains_and_reports_mae_in_target_units() -> None:
    data = load("diabetes")
    reports: list[dict[str, float]] = []
    outcome = train_trial(
        _job({**GOOD, "learning_rate": 0.01}, epochs=8, dataset="diabetes", metric="val_mae"),
        data,
        lambda _e, _v, m: reports.append(m) or "continue",
    )
    assert outcome.state == "complete", outcome.reason
    # The targets' spread is ~77; an MAE in scaled units would be below 1.
    assert outcome.value is not None and 30 < outcome.value < 80
    assert reports[-1]["val_mae"] == outcome.value
    assert outcome.history["val_mae"][-1] == outcome.value  # the history in the same units
    assert outcome.history["val_loss"][-1] == reports[-1]["val_loss"]  # losses stay scaled


def test_final_model_scores_mae_in_target_units() -> None:
    from workers.jobs import train_final

    job = _job({**GOOD, "learning_rate": 0.01}, epochs=3, dataset="diabetes", metric="val_mae")
    value, content = train_final(job, load("diabetes"))
    assert 20 < value < 200  # the targets' units (a scaled MAE would be below ~1.5)
    assert content[:2] == b"PK"  # a .keras file is a zip archive


def test_tensorflow_start_up_lines_are_hidden_at_log_level_3() -> None:
    code = "import workers.training, tensorflow as tf; tf.constant(1); print('ran')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
    )
    assert out.stdout == "ran\n"
    assert out.stderr == ""


def test_cnn_trains_on_images(digits: Split) -> None:
    outcome = train_trial(_job(GOOD, epochs=3, family="cnn"), digits, lambda *_: "continue")
    assert outcome.state == "complete", outcome.reason
    assert outcome.value is not None and outcome.value > 0.8


def test_time_limit_fails_the_trial(digits: Split) -> None:
    outcome = train_trial(_job(GOOD, epochs=50, time_limit_s=0.01), digits, lambda *_: "continue")
    assert outcome.state == "fail"
    assert outcome.reason is not None
    assert outcome.reason.startswith("time limit of 0.01s exceeded after epoch 1")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_keras_data_sets_from_the_cache_train_a_cnn(tmp_path: Path, name: str) -> None:
    from tests.workers.test_data import _fake_keras_cache

    source = DataSource(
        keras_dir=_fake_keras_cache(tmp_path), cache_dir=tmp_path, allow_downloads=False
    )
    data = source.load(BUILTIN_DATASETS[name])
    outcome = train_trial(
        _job(GOOD, epochs=1, dataset=name, family="cnn"), data, lambda *_: "continue"
    )
    assert outcome.state == "complete", outcome.reason  # (random pixels: nothing to learn)


def test_tensorboard_logs_only_when_the_study_asks(digits: Split, tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    train_trial(_job(GOOD, epochs=2), digits, lambda *_: "continue", tensorboard_dir=logs)
    assert not logs.exists()
    asked = _job(GOOD, epochs=2).model_copy(update={"tensorboard": True})
    outcome = train_trial(asked, digits, lambda *_: "continue", tensorboard_dir=logs)
    assert outcome.state == "complete"
    events = sorted(p.parent.name for p in logs.rglob("events.out.tfevents.*"))
    assert events == ["train", "validation"]


def test_a_model_over_the_size_limit_fails_before_training(digits: Split) -> None:
    """Custom families cannot be sized at submission; the worker counts before it fits."""
    reports: list[int] = []
    job = _job(GOOD).model_copy(update={"max_model_params": 1000})  # the mlp has ~13k parameters
    outcome = train_trial(job, digits, lambda epoch, *_: reports.append(epoch) or "continue")
    assert outcome.state == "fail" and reports == []
    assert outcome.reason is not None
    assert "more than the service's limit of 1000 (HPO_MAX_MODEL_PARAMS)" in outcome.reason
    assert outcome.epochs_run == 0
