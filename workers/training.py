"""Training one trial: build the model from the leased parameters, fit, report every epoch.

The training rules of ``search-space.md`` are enforced here: logits with
``from_logits=True``, inputs standardised on the training split (``workers.data``),
shuffling every epoch, validation metrics on the end-of-epoch model reported as the
intermediate values, and a non-finite loss ending the trial at once as a failure.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import keras

from search_space.keras_builder import build_model, build_optimizer, schedule_callbacks
from workers.data import Split

log = logging.getLogger(__name__)

Reporter = Callable[[int, float, dict[str, float]], str]
"""``report(epoch, objective_value, metrics) -> action`` (continue, prune or stop)."""


@dataclass(frozen=True)
class Assignment:
    """What the service hands a worker with a lease (``POST /trials/lease``)."""

    trial_id: int
    number: int
    study_name: str
    params: dict[str, Any]
    dataset: str
    model_family: str
    epochs: int
    metric: str
    seed: int
    lease_seconds: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Assignment:
        return cls(
            trial_id=int(body["trial_id"]),
            number=int(body["number"]),
            study_name=str(body["study_name"]),
            params=dict(body["params"]),
            dataset=str(body["dataset"]),
            model_family=str(body["model"]["family"]),
            epochs=int(body["epochs"]),
            metric=str(body["metric"]),
            seed=int(body["seed"]),
            lease_seconds=float(body["lease_seconds"]),
        )


@dataclass
class Outcome:
    """How a trial ended on the worker."""

    state: Literal["complete", "fail", "pruned", "stopped"]
    value: float | None = None
    reason: str | None = None
    epochs_run: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


def configure_tensorflow(threads: int) -> None:
    """Pin TensorFlow's thread pools; must run before TensorFlow executes anything."""
    if threads <= 0:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


class _EpochReporter(keras.callbacks.Callback):
    """Checks the loss, reports the objective each epoch, and stops training when told."""

    def __init__(self, metric: str, report: Reporter, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.metric = metric
        self.report = report
        self.should_stop = should_stop
        self.outcome: Outcome | None = None
        self.epochs_run = 0
        self.last_value: float | None = None

    def _end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.epochs_run = epoch + 1
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self._end(Outcome("fail", reason=f"non-finite loss at epoch {epoch + 1}"))
            return
        value = float(logs.get(self.metric, math.nan))
        if not math.isfinite(value):
            self._end(Outcome("fail", reason=f"non-finite {self.metric} at epoch {epoch + 1}"))
            return
        self.last_value = value
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        action = self.report(epoch + 1, value, metrics)
        if action == "prune":
            self._end(Outcome("pruned", value=value))
        elif action == "stop" or self.should_stop():
            self._end(Outcome("stopped", value=value, reason="stop requested"))


def train_trial(
    job: Assignment,
    data: Split,
    report: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Train the trial's model on ``data`` and say how it ended. Never raises for a
    failure of the trial itself (a bad configuration, a non-finite loss, out of memory):
    those come back as ``Outcome("fail", reason=...)``."""
    reporter = _EpochReporter(job.metric, report, should_stop)
    history: dict[str, list[float]] = {}
    try:
        keras.utils.set_random_seed(job.seed)
        model = build_model(
            job.params,
            input_shape=data.input_shape,
            n_outputs=int(data.info.n_classes or 1),
            seed=job.seed,
        )
        model.compile(
            optimizer=build_optimizer(job.params),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        fit = model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            epochs=job.epochs,
            batch_size=int(job.params.get("batch_size", 64)),
            shuffle=True,
            verbose=0,
            callbacks=[reporter, *schedule_callbacks(job.params)],
        )
        history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    except Exception as exc:  # the trial failed; the worker goes on
        log.exception("trial %s failed while building or training", job.trial_id)
        text = f"{type(exc).__name__}: {exc}".strip()
        return Outcome("fail", reason=text[:2000], epochs_run=reporter.epochs_run)
    finally:
        # Free the graph, the model and the optimizer before the next trial.
        keras.backend.clear_session(free_memory=True)
        gc.collect()
    outcome = reporter.outcome or Outcome("complete", value=reporter.last_value)
    outcome.epochs_run = reporter.epochs_run
    outcome.history = history
    if outcome.state == "complete" and outcome.value is None:
        outcome = Outcome("fail", reason="training ran no epoch", history=history)
    return outcome
