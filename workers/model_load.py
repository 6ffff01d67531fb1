"""Loads an uploaded final model with Keras, in a short-lived child process of its own.

``python -m workers.model_load DIR FAMILY N_FEATURES`` reads ``DIR/model.keras``
and writes its verdict to ``DIR/verdict.json``; :mod:`service.domain.model_check` starts
it and judges the verdict. It lives with the worker's code (TensorFlow quiet at import,
as in a trainer: :mod:`workers.quiet`); the API only runs it as a command. The API
process itself never imports TensorFlow or Keras: only this child does, inside
:func:`main`, so importing this module costs nothing.

The verdict is one JSON object:

- ``{"refused": "<Type>: <message>"}``: Keras would not load the file in safe mode
  (``keras.saving.load_model(path, safe_mode=True, compile=False)``), e.g. a ``Lambda``
  layer, an unknown class, weights that do not fit the architecture;
- otherwise ``{"inputs": [[null, 4]] | null, "outputs": [[null, 3]] | null,
  "called": [2, 3] | null, "call_error": "<Type>: <message>" | null}``: the graph's
  declared shapes (``null`` for a model without a graph) and the shape of its answer to
  two rows of zeros of the data set's width (tried when the inputs fit, or are unknown).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from workers.quiet import tensorflow_import

MAX_MESSAGE = 600
"""How much of an exception's text the verdict keeps."""


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:MAX_MESSAGE]


def _shapes(model: Any, attribute: str) -> list[list[int | None]] | None:
    try:
        tensors = getattr(model, attribute)
    except (AttributeError, ValueError):  # a model without a graph (subclassed)
        return None
    if not tensors:
        return None
    return [[None if d is None else int(d) for d in t.shape] for t in tensors]


def judge(path: Path, family: str, n_features: int) -> dict[str, Any]:
    """Load ``path`` in safe mode and describe what came out."""
    import numpy as np

    from search_space.families import BUILTIN_FAMILIES, load_builder

    with tensorflow_import():
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

    if family not in BUILTIN_FAMILIES:
        # Importing the family's installed package registers its serializable classes;
        # no code comes from the file.
        try:
            load_builder(family)
        except Exception as exc:
            return {"refused": f"model family {family!r} does not import here: {_why(exc)}"}
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        return {"refused": _why(exc)}
    if not isinstance(model, keras.Model):
        return {"refused": f"the file holds a {type(model).__name__}, not a keras.Model"}
    inputs, outputs = _shapes(model, "inputs"), _shapes(model, "outputs")
    verdict: dict[str, Any] = {
        "inputs": inputs,
        "outputs": outputs,
        "called": None,
        "call_error": None,
    }
    if inputs is None or inputs == [[None, n_features]]:
        try:
            answer = model(np.zeros((2, n_features), dtype="float32"), training=False)
            verdict["called"] = [int(d) for d in answer.shape]
        except Exception as exc:
            verdict["call_error"] = _why(exc)
    return verdict


def main(argv: list[str]) -> int:
    folder, family, n_features = Path(argv[0]), argv[1], int(argv[2])
    verdict = judge(folder / "model.keras", family, n_features)
    tmp = folder / "verdict.json.tmp"
    tmp.write_text(json.dumps(verdict))
    tmp.replace(folder / "verdict.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
