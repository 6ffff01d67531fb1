"""Measuring a trial while it trains: a Keras callback that probes the model on a fixed
batch of training rows at a few epochs, and reads the loss curves at the end.

At the first epoch, the middle one, the last, and the epoch where a trial ends early
(pruned, stopped, failed) it runs one forward and backward pass on ``PROBE_ROWS`` rows
(eagerly: nothing is traced, so nothing is left in TensorFlow's graph caches) and keeps:
each layer's gradient (RMS per weight), the global gradient norm, the share of saturated
sigmoid/tanh units and of dead ReLU units per layer, and a classifier's mean top
probability. ``findings()`` turns those and the epoch history into the records the
service stores (``diagnostics.codes`` names them and traces each threshold to its note).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diagnostics.codes import (
    CLIPPED_FRACTION,
    DEAD_FRACTION,
    EXPLODING_GROWTH,
    EXPLODING_NORM,
    PROBE_ROWS,
    SATURATED_FRACTION,
    SATURATION_Z,
    UNDERCONFIDENT_MARGIN,
    VANISHING_RATIO,
    Code,
)
from diagnostics.curves import Finding, curve_findings, finding
from workers.quiet import tensorflow_import

with tensorflow_import():
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)


_SATURATING = ("sigmoid", "tanh")


@dataclass
class _Sample:
    """What one probe measured."""

    epoch: int
    grad_rms: dict[str, float]  # hidden layers' kernels, by layer name
    output_rms: float
    global_norm: float
    max_var_norm: float
    saturated: dict[str, float] = field(default_factory=dict)  # share of (row, unit) pairs
    dead: dict[str, float] = field(default_factory=dict)  # share of units
    top_prob: float | None = None


def _activation_name(layer: keras.layers.Layer) -> str | None:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    return None if name in (None, "linear") else str(name)


class Probe(keras.callbacks.Callback):
    """Measures the model at the probe epochs; ``findings()`` says what went wrong."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        n_classes: int | None,
        clipnorm: float | None,
    ) -> None:
        super().__init__()
        self.x = tf.constant(x[:PROBE_ROWS])
        self.y = tf.constant(y[:PROBE_ROWS])
        self.epochs = epochs
        self.n_classes = n_classes if n_classes and n_classes > 1 else None
        self.clipnorm = clipnorm
        self.at = {1, max(1, (epochs + 1) // 2), epochs}
        self.samples: list[_Sample] = []
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self.non_finite: Finding | None = None
        self.seconds = 0.0
        self.broken = False
        self._probe: keras.Model | None = None
        self._acts: list[tuple[str, str]] = []  # (layer name, activation) per probe output

    # -- keras hooks ---------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        layers = [
            layer
            for layer in self.model.layers
            if _activation_name(layer) and layer is not self.model.layers[-1]
        ]
        try:  # a functional model: its units' outputs are reachable
            self._probe = keras.Model(
                self.model.inputs, [layer.output for layer in layers] + list(self.model.outputs)
            )
            self._acts = [(layer.name, _activation_name(layer) or "") for layer in layers]
        except (AttributeError, ValueError, TypeError):  # a subclassed model: gradients only
            self._probe, self._acts = None, []
        self.seconds += time.perf_counter() - started

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.non_finite is not None:
            return
        logs = logs or {}
        loss = float(logs.get("loss", math.nan))
        self.losses.append(loss)
        if "val_loss" in logs:
            self.val_losses.append(float(logs["val_loss"]))
        if not math.isfinite(loss):
            self._safely(self._non_finite, epoch + 1, loss)
        elif epoch + 1 in self.at:
            self._safely(self._measure, epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        ran = len(self.losses)
        if ran and self.non_finite is None and (not self.samples or self.samples[-1].epoch != ran):
            self._safely(self._measure, ran)  # where the trial ended early

    def _safely(self, measure: Any, *args: Any) -> None:
        """Measure, timed; a model the probe cannot read (a custom family's odd inputs) is
        logged and left unprobed: diagnostics never fail a trial."""
        if self.broken:
            return
        started = time.perf_counter()
        try:
            measure(*args)
        except Exception:
            log.warning("the probe could not measure this model; no more probes", exc_info=True)
            self.broken = True
        finally:
            self.seconds += time.perf_counter() - started

    # -- measuring -----------------------------------------------------------------------

    def _measure(self, epoch: int) -> None:
        model = self.model
        weights = list(model.trainable_weights)
        with tf.GradientTape() as tape:
            if self._probe is not None:
                outputs = self._probe(self.x, training=False)
                outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
                acts, logits = list(outputs[:-1]), outputs[-1]
            else:
                acts, logits = [], model(self.x, training=False)
            loss = model.loss(self.y, logits)
        grads = tape.gradient(loss, weights)
        present = [(w, g) for w, g in zip(weights, grads, strict=True) if g is not None]
        if not present:
            return  # nothing trainable reaches the loss
        # One conversion for every norm: each op costs more in dispatch than in arithmetic.
        squares = tf.stack([tf.reduce_sum(tf.square(g)) for _, g in present]).numpy()
        norm_of = {id(w): math.sqrt(float(sq)) for (w, _), sq in zip(present, squares, strict=True)}
        norms = list(norm_of.values())
        kernels = [
            (layer.name, layer.kernel)
            for layer in model.layers
            if getattr(layer, "kernel", None) is not None and id(layer.kernel) in norm_of
        ]
        rms = {
            name: norm_of[id(k)] / math.sqrt(max(1, int(np.prod(k.shape)))) for name, k in kernels
        }
        output_name = kernels[-1][0] if kernels else None
        sample = _Sample(
            epoch=epoch,
            grad_rms={k: v for k, v in rms.items() if k != output_name},
            output_rms=rms.get(output_name, 0.0) if output_name else 0.0,
            global_norm=math.sqrt(sum(n * n for n in norms)),
            max_var_norm=max(norms, default=0.0),
        )
        for (name, activation), a in zip(self._acts, acts, strict=True):
            values = np.asarray(a)
            if activation == "sigmoid":
                low, high = 1 / (1 + math.exp(SATURATION_Z)), 1 / (1 + math.exp(-SATURATION_Z))
                sample.saturated[name] = float(np.mean((values < low) | (values > high)))
            elif activation == "tanh":
                sample.saturated[name] = float(np.mean(np.abs(values) > math.tanh(SATURATION_Z)))
            elif activation == "relu":
                per_unit = values.reshape(-1, values.shape[-1]).max(axis=0)
                sample.dead[name] = float(np.mean(per_unit <= 0))
        if self.n_classes is not None:
            sample.top_prob = float(tf.reduce_mean(tf.reduce_max(tf.nn.softmax(logits), axis=-1)))
        self.samples.append(sample)

    def _non_finite(self, epoch: int, loss: float) -> None:
        """Where the values went non-finite first: the first layer (in order) whose weights
        are, else the first whose output on the probe rows is."""
        layer_name: str | None = None
        for layer in self.model.layers:
            if any(not np.all(np.isfinite(np.asarray(w))) for w in layer.weights):
                layer_name = layer.name
                break
        if layer_name is None and self._probe is not None:
            outputs = self._probe(self.x, training=False)
            for (name, _), a in zip(self._acts, list(outputs)[:-1], strict=False):
                if not np.all(np.isfinite(np.asarray(a))):
                    layer_name = name
                    break
        where = f" (first in layer {layer_name})" if layer_name else ""
        self.non_finite = finding(
            Code.NON_FINITE_LOSS,
            epoch,
            math.inf,
            0.0,
            layer_name,
            detail=f"loss {loss} at epoch {epoch}{where}",
        )

    # -- judging -------------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        """One record per code that holds (the first probe where it did, the worst layer)."""
        out: dict[str, Finding] = {}

        def add(f: Finding) -> None:
            out.setdefault(f["code"], f)

        if self.non_finite is not None:
            add(self.non_finite)
        for s in self.samples:
            for f in self._from_sample(s):
                add(f)
        if self.non_finite is None:
            for f in curve_findings(self.losses, self.val_losses):
                add(f)
        return list(out.values())

    def _from_sample(self, s: _Sample) -> list[Finding]:
        found: list[Finding] = []
        if s.grad_rms and s.output_rms > 1e-12:
            layer, rms = min(s.grad_rms.items(), key=lambda kv: kv[1])
            ratio = rms / s.output_rms
            if ratio < VANISHING_RATIO:
                found.append(
                    finding(
                        Code.VANISHING_GRADIENTS,
                        s.epoch,
                        ratio,
                        VANISHING_RATIO,
                        layer,
                        detail=f"{layer}'s gradient is {ratio:.1e} of the output layer's",
                    )
                )
        first = self.samples[0]
        growth = s.global_norm / first.global_norm if first.global_norm > 0 else 1.0
        if s.global_norm > EXPLODING_NORM or (s is not first and growth > EXPLODING_GROWTH):
            found.append(
                finding(
                    Code.EXPLODING_GRADIENTS,
                    s.epoch,
                    s.global_norm,
                    EXPLODING_NORM,
                    detail=f"gradient norm {s.global_norm:.3g} ({growth:.3g}x the first probe's)",
                )
            )
        if self.clipnorm is not None and s is self.samples[-1] and len(self.samples) >= 2:
            clipped = sum(x.max_var_norm > self.clipnorm for x in self.samples) / len(self.samples)
            if clipped > CLIPPED_FRACTION:
                found.append(
                    finding(
                        Code.EXPLODING_GRADIENTS,
                        s.epoch,
                        clipped,
                        CLIPPED_FRACTION,
                        detail=f"clipnorm {self.clipnorm:g} exceeded at {clipped:.0%} of probes",
                    )
                )
        for code, shares, limit, what in (
            (
                Code.SATURATED_UNITS,
                s.saturated,
                SATURATED_FRACTION,
                f"outputs have |z| > {SATURATION_Z:g}",
            ),
            (Code.DEAD_UNITS, s.dead, DEAD_FRACTION, "units output 0 on every probe row"),
        ):
            if not shares:
                continue
            layer, share = max(shares.items(), key=lambda kv: kv[1])  # the worst layer
            if share > limit:
                found.append(
                    finding(
                        code,
                        s.epoch,
                        share,
                        limit,
                        layer,
                        detail=f"{share:.0%} of {layer}'s {what}",
                    )
                )
        if s.top_prob is not None and s is self.samples[-1] and self.n_classes:
            chance = 1 / self.n_classes
            limit = chance + UNDERCONFIDENT_MARGIN * (1 - chance)
            if s.top_prob < limit:
                found.append(
                    finding(
                        Code.UNDERCONFIDENT,
                        s.epoch,
                        s.top_prob,
                        limit,
                        detail=f"mean top probability {s.top_prob:.3f} (chance {chance:.3f})",
                    )
                )
        return found
