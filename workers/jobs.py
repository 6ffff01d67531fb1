"""The jobs that are not trials: the sanity run, and retraining the best model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.protocol import Lease
from workers.data import Split
from workers.quiet import tensorflow_import

with tensorflow_import():
    import keras

    from search_space.keras_builder import schedule_callbacks
    from workers.keras_memory import free_memory
    from workers.training import compiled_model

SANITY_ROWS = 32
SANITY_MAX_EPOCHS = 300
SANITY_MIN_ACCURACY = 0.99
SANITY_MAX_SCALED_MSE = 0.1
"""Regression targets are standardised, so an MSE of 0.1 explains 90% of their variance."""


class _Fitted(keras.callbacks.Callback):
    """Stops as soon as the handful of rows is fitted."""

    def __init__(self, classify: bool) -> None:
        super().__init__()
        self.classify = classify

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        done = (
            logs.get("accuracy", 0.0) >= 1.0
            if self.classify
            else logs.get("loss", math.inf) <= SANITY_MAX_SCALED_MSE / 2
        )
        if done or not math.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True


def sanity_check(job: Lease, data: Split) -> tuple[bool, str]:
    """Can the model overfit a handful of training rows? (True, detail) or (False, why)."""
    n = min(SANITY_ROWS, len(data.y_train))
    x, y = data.x_train[:n], data.y_train[:n]
    classify = data.info.task == "classification"
    model = compiled_model(job, data)
    history = model.fit(
        x, y, batch_size=n, epochs=SANITY_MAX_EPOCHS, verbose=0, callbacks=[_Fitted(classify)]
    )
    epochs = len(history.history["loss"])
    scores = model.evaluate(x, y, batch_size=n, verbose=0, return_dict=True)
    free_memory()
    config = ", ".join(f"{k}={v}" for k, v in job.params.items())
    if classify:
        score, passed = float(scores["accuracy"]), scores["accuracy"] >= SANITY_MIN_ACCURACY
        what = f"training accuracy {score:.3f}"
    else:
        score, passed = float(scores["loss"]), scores["loss"] <= SANITY_MAX_SCALED_MSE
        what = f"scaled training MSE {score:.3f}"
    if passed:
        return True, f"fitted {n} training rows to {what} in {epochs} epochs"
    return False, (
        f"the model could not overfit {n} training rows ({what} after {epochs} "
        f"epochs with {config}); the model or the data is broken"
    )


def train_final(job: Lease, data: Split) -> tuple[float, bytes]:
    """Retrain the best configuration on train + validation for the study's epochs and
    score it once on the test split. Returns (test value, the ``.keras`` file's bytes)."""
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    model = compiled_model(job, data)
    history = model.fit(
        x,
        y,
        epochs=job.epochs,
        batch_size=int(job.params.get("batch_size", 64)),
        shuffle=True,
        verbose=0,
        # No validation split here: a plateau schedule watches the training loss.
        callbacks=schedule_callbacks(job.params, monitor="loss"),
    )
    last_loss = history.history["loss"][-1]
    if not math.isfinite(last_loss):
        raise ArithmeticError(
            f"non-finite loss at epoch {len(history.history['loss'])} "
            "while retraining the best configuration"
        )
    scores = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    name = job.metric.removeprefix("val_")
    value = data.to_target_units(name, scores[name])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.keras"
        model.save(path)  # architecture, weights and optimizer state
        content = path.read_bytes()
    free_memory()
    return value, content
