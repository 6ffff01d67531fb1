"""Freeing what one job's model left behind, so a trainer stays the same size over any
number of jobs (issue 14).

``keras.backend.clear_session`` frees the model, its optimizer and Keras's graph state, but
not everything a traced training step holds. Keras's TensorFlow optimizer sums the
gradients with ``tf.distribute``'s ``all_reduce`` (even with one device), which is a
``tf.custom_gradient``; traced in a graph, a custom gradient registers a function named
``CustomGradient-<uid>`` in TensorFlow's process-wide gradient registry, and nothing ever
removes it. Its closure holds the tensors of the traced step, and through them the whole
``FuncGraph``: about 4.4 MiB and 10,000 Python objects a trial, which ``gc`` can reach (so
every later collection walks them) and never frees. Measured on a warm process, 120 trials
of a small MLP: 679 -> 1,204 MiB, and a trial 4x slower by the end; with the registrations
dropped, 647 MiB throughout.

A registration is needed only while its step is traced and differentiated, inside
``fit``; after the job nothing calls that step again, so the ones added since this module
was imported are dropped with the session. Those registered before (by TensorFlow or a
library at import) are kept.
"""

from __future__ import annotations

import logging

from workers.quiet import tensorflow_import

with tensorflow_import():
    import keras
    from tensorflow.python.framework import ops as _tf_ops

log = logging.getLogger(__name__)

_PREFIX = "CustomGradient-"


def _registry() -> dict[str, object] | None:
    """TensorFlow's gradient registry (a private structure), or None if it has moved."""
    registry = getattr(getattr(_tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


_registry_at_import = _registry()
_KEPT = frozenset(k for k in (_registry_at_import or {}) if k.startswith(_PREFIX))
if _registry_at_import is None:  # a TensorFlow whose internals moved: nothing to drop
    log.warning("TensorFlow's gradient registry was not found: trainers will grow a little a job")


def _traced(registry: dict[str, object]) -> list[str]:
    """The custom gradients registered since import: the traced steps' own."""
    return [k for k in registry if k.startswith(_PREFIX) and k not in _KEPT]


def traced_gradients() -> int:
    """How many custom gradients later jobs registered and were not dropped (tests)."""
    registry = _registry()
    return 0 if registry is None else len(_traced(registry))


def free_memory() -> None:
    """Free the last job's model, optimizer, traced steps and their gradient registrations
    (and run the garbage collector once, as ``clear_session(free_memory=True)`` does)."""
    registry = _registry()
    if registry is not None:
        for name in _traced(registry):
            del registry[name]
    keras.backend.clear_session(free_memory=True)
