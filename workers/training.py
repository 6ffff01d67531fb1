"""Training one trial: build the model from the leased parameters, fit, report every epoch.

The training rules of ``search-space.md`` are enforced here: logits with
``from_logits=True``, inputs standardised on the training split (``workers.data``),
shuffling every epoch, validation metrics on the end-of-epoch model reported as the
intermediate values, and a non-finite loss ending the trial at once as a failure.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_space.families import BUILTIN_FAMILIES, load_builder
from service.protocol import Lease
from service.states import Action
from workers.data import Split
from workers.outcome import Outcome
from workers.quiet import tensorflow_import

with tensorflow_import():  # TensorFlow loads here (its start-up lines: ``workers.quiet``)
    import keras

    from diagnostics.probe import Probe
    from search_space.keras_builder import build_model, build_optimizer, schedule_callbacks
    from search_space.size import param_value
    from workers import keras_memory

log = logging.getLogger(__name__)

Reporter = Callable[[int, float, dict[str, float]], str]
"""``report(epoch, objective_value, metrics) -> action`` (continue, prune or stop)."""


def configure_tensorflow(threads: int) -> None:
    """Pin TensorFlow's thread pools; must run before TensorFlow executes anything."""
    if threads <= 0:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


class _EpochReporter(keras.callbacks.Callback):
    """Checks the loss, reports the objective each epoch, and stops training when told."""

    def __init__(
        self,
        metric: str,
        report: Reporter,
        should_stop: Callable[[], bool],
        *,
        in_target_units: Callable[[dict[str, Any]], dict[str, float]],
        time_limit_s: float | None = None,
        answer: Callable[[], str | None] = lambda: None,
        on_start: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.metric = metric
        self.report = report
        self.should_stop = should_stop
        self.answer = answer
        self.on_start = on_start
        self.in_target_units = in_target_units
        self.time_limit_s = time_limit_s
        self.started = time.monotonic()
        self.outcome: Outcome | None = None
        self.epochs_run = 0
        self.last_value: float | None = None

    def _end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.model.stop_training = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.on_start()

    def _act(self, action: str | None) -> bool:
        """End training on a prune or a stop (the service's, or the worker's own)."""
        if action == Action.PRUNE:
            self._end(Outcome("pruned", value=self.last_value))
        elif action == Action.STOP or self.should_stop():
            self._end(Outcome("stopped", value=self.last_value, reason="stop requested"))
        return self.outcome is not None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # A stop (SIGTERM), or an answer that arrived while this epoch trains, takes
        # effect now, not at the epoch's end.
        if self.outcome is None:
            self._act(self.answer())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.outcome is not None:
            return
        logs = logs or {}
        self.epochs_run = epoch + 1
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self._end(Outcome("fail", reason=f"non-finite loss at epoch {epoch + 1}"))
            return
        metrics = self.in_target_units(logs)  # absolute errors in the target's units
        value = metrics.get(self.metric, math.nan)
        if not math.isfinite(value):
            self._end(Outcome("fail", reason=f"non-finite {self.metric} at epoch {epoch + 1}"))
            return
        self.last_value = value
        if self._act(self.report(epoch + 1, value, metrics)):
            return
        elapsed = time.monotonic() - self.started
        if (
            self.time_limit_s is not None
            and elapsed > self.time_limit_s
            and (epoch + 1 < self.params["epochs"])
        ):
            self._end(
                Outcome(
                    "fail",
                    reason=f"time limit of {self.time_limit_s:g}s exceeded "
                    f"after epoch {epoch + 1} ({elapsed:.1f}s)",
                )
            )


class ModelTooLarge(ValueError):
    """The trial's model has more parameters than the service allows."""


def compiled_model(job: Lease, data: Split) -> keras.Model:
    """The trial's model, compiled for its task (seeded: the same job builds the same)."""
    keras.utils.set_random_seed(job.seed)
    shape: dict[str, Any] = {
        "n_features": data.n_features,
        "n_outputs": int(data.info.n_classes or 1),
        "image_shape": data.info.image_shape,
        "seed": job.seed,
    }
    family = job.model.family
    if family in BUILTIN_FAMILIES:
        model = build_model(job.params, family=family, **shape)
    else:
        model = load_builder(family)(dict(job.params), **shape)
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"model family {family!r} built a {type(model).__name__}, not a keras.Model"
            )
    size = model.count_params()
    if size > job.max_model_params:
        raise ModelTooLarge(
            f"the model has {size} parameters, more than the service's "
            f"limit of {job.max_model_params} (HPO_MAX_MODEL_PARAMS)"
        )
    if data.info.task == "classification":
        loss: keras.losses.Loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics: list[keras.metrics.Metric] = [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ]
    else:
        loss = keras.losses.MeanSquaredError()
        metrics = [keras.metrics.MeanAbsoluteError(name="mae")]
    model.compile(optimizer=build_optimizer(job.params), loss=loss, metrics=metrics)
    return model


def _tensorboard(log_dir: Path | None) -> list[keras.callbacks.Callback]:
    if log_dir is None:
        return []
    if importlib.util.find_spec("tensorboard") is None:
        log.warning(
            "the study asks for TensorBoard logs, but this worker lacks the "
            "tensorboard package (pip install 'hpo-service[tensorboard]')"
        )
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def train_trial(
    job: Lease,
    data: Split,
    report: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    answer: Callable[[], str | None] = lambda: None,
    on_start: Callable[[], None] = lambda: None,
    tensorboard_dir: Path | None = None,
    free_memory: bool = True,
) -> Outcome:
    """Train the trial's model on ``data`` and say how it ended. Never raises for a
    failure of the trial itself (a bad configuration, a non-finite loss, out of memory):
    those come back as ``Outcome("fail", reason=...)``.

    ``report`` returns the service's answer to an epoch; ``answer`` is polled between
    batches for one that arrived later (a report that did not wait). ``on_start`` runs
    when ``fit`` begins. ``free_memory=False`` leaves ``keras_memory.free_memory`` to
    the caller (the trainer runs it after sending the outcome)."""
    reporter = _EpochReporter(
        job.metric,
        report,
        should_stop,
        in_target_units=data.metrics_in_target_units,
        time_limit_s=job.trial_time_limit_s,
        answer=answer,
        on_start=on_start,
    )
    history: dict[str, list[float]] = {}
    probe = None
    if job.diagnostics:
        clipnorm = param_value(job.params, "clipnorm")
        probe = Probe(
            data.x_train,
            data.y_train,
            epochs=job.epochs,
            n_classes=data.info.n_classes,
            clipnorm=None if clipnorm is None else float(clipnorm),
        )
    try:
        model = compiled_model(job, data)
        fit = model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            epochs=job.epochs,
            batch_size=int(job.params.get("batch_size", 64)),
            shuffle=True,
            verbose=0,
            callbacks=[
                *([probe] if probe is not None else []),
                reporter,
                *schedule_callbacks(job.params),
                *_tensorboard(tensorboard_dir if job.tensorboard else None),
            ],
        )
        # Absolute errors back in the target's units, like the reported values.
        history = {
            k: [data.to_target_units(k, v) for v in vs]
            for k, vs in fit.history.items()
            if k != "learning_rate"
        }
    except Exception as exc:  # the trial failed; the worker goes on
        log.exception("trial %s failed while building or training", job.trial_id)
        text = f"{type(exc).__name__}: {exc}".strip()
        failed = Outcome("fail", reason=text[:2000], epochs_run=reporter.epochs_run)
        if probe is not None:
            failed.findings, failed.diagnostics_s = probe.findings(), probe.seconds
        return failed
    finally:
        if free_memory:
            # Free the graph, the model and the optimizer before the next trial (this also
            # runs the garbage collector: one collection, not two).
            keras_memory.free_memory()
    outcome = reporter.outcome or Outcome("complete", value=reporter.last_value)
    outcome.epochs_run = reporter.epochs_run
    outcome.history = history
    train_key = job.metric.removeprefix("val_")
    if history.get(train_key) and history.get(job.metric):
        gap = history[train_key][-1] - history[job.metric][-1]
        outcome.train_val_gap = gap if math.isfinite(gap) else None
    if outcome.state == "complete" and outcome.value is None:
        outcome = Outcome("fail", reason="training ran no epoch", history=history)
    if probe is not None:
        outcome.findings, outcome.diagnostics_s = probe.findings(), probe.seconds
    return outcome
