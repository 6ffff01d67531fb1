"""TensorFlow's C++ start-up lines, when the user asked for silence.

``TF_CPP_MIN_LOG_LEVEL=3`` (set by ``hpo up`` and the compose file, or by the user) hides
TensorFlow's own C++ log lines, the CUDA ``cuInit`` error on a CPU-only machine among
them. A few lines still come out at import: the shared libraries log before TensorFlow
has read the setting (absl's ``All log messages before absl::InitializeLog() ...`` and
``cudart_stub.cc: Could not find cuda drivers on your machine``), straight to file
descriptor 2. :func:`tensorflow_import` points that descriptor at ``/dev/null`` while
TensorFlow loads, and only when the level is 3 or more: below that the user wants to
see warnings or errors, and nothing is hidden. This module never sets the level itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

QUIET_LEVEL = 3
"""``TF_CPP_MIN_LOG_LEVEL`` at which TensorFlow's start-up lines are hidden too."""


def _wants_silence() -> bool:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= QUIET_LEVEL
    except ValueError:
        return False


@contextlib.contextmanager
def tensorflow_import() -> Iterator[None]:
    """Wrap the first ``import keras`` / ``import tensorflow`` of a worker module.

    A no-op when TensorFlow is already loaded or the level is below 3. Python errors
    raised by the import still show: the descriptor is restored before they propagate.
    """
    if "tensorflow" in sys.modules or not _wants_silence():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
