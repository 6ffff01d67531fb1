"""Is an uploaded final model what the study needs? Checked before it is stored.

A final model is accepted only if it is a ``.keras`` archive that Keras loads in safe
mode, taking the data set's rows (``(None, n_features)``) to one output per class, or one
value for a regression (``(None, n_outputs)``). Anything else is an :class:`Invalid` on
the upload's ``file`` field, saying what was wrong; nothing is stored and the job stays
with its worker.

Two steps, the cheap one first:

1. As data, in this process: a zip of bounded size and member count, with
   ``config.json`` and ``metadata.json`` (read with a bound), the config JSON whose input
   and output shapes, where it declares them plainly (an ``InputLayer``'s
   ``batch_shape``, a ``Dense`` output layer's ``units``), must fit already.
2. Keras, in a short-lived child (:mod:`workers.model_load`): the file in a
   temporary folder, TensorFlow on one thread, its logs off, none of the service's
   settings (tokens, database URL) in its environment, killed after
   ``LOAD_TIMEOUT_S``. The API process never imports TensorFlow. The child's TensorFlow
   import is most of the cost (11 s on a lightly loaded shared core, up to 35 s on a busy
   one); at most ``MAX_LOADS`` run at once per API process, and a call that cannot get a
   turn within ``LOAD_WAIT_S`` is answered ``503`` (the worker retries).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, ClassVar

from search_space.catalog import DatasetInfo
from service.errors import Invalid, ServiceError

log = logging.getLogger(__name__)

FIELD = ("file",)
"""The upload's form field every refusal names."""
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 1024**3
"""What the archive may unpack to (Keras stores its members uncompressed)."""
MAX_CONFIG_BYTES = 16 * 1024**2
MAX_METADATA_BYTES = 64 * 1024
LOAD_TIMEOUT_S = 120.0
"""A child that has not judged the file by then is killed and the model refused."""
MAX_LOADS = 2
"""Children loading models at once, per API process (each holds TensorFlow: ~0.5 GB)."""
LOAD_WAIT_S = 60.0
"""How long an upload waits for a turn before it is answered 503."""
_TURNS = threading.BoundedSemaphore(MAX_LOADS)

Shape = tuple[int | None, ...]


class CheckUnavailable(ServiceError):
    """The model could not be checked now (no turn, or the checker itself broke)."""

    status = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


def _refuse(msg: str, content: bytes) -> Invalid:
    return Invalid(FIELD, msg, f"{len(content)} bytes")


def _text(shape: Shape | list[Any]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


class Needs:
    """The shapes a study's data set needs of its model."""

    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        self.n_features = info.n_features
        self.n_outputs = int(info.n_classes or 1)
        self.input: Shape = (None, self.n_features)
        self.output: Shape = (None, self.n_outputs)

    def _what_out(self) -> str:
        if self.info.n_classes:
            return f"one logit per class, {self.n_outputs}"
        return "one regression value"

    def inputs(self, shapes: list[list[int | None]]) -> str | None:
        """Why these input shapes do not fit, or None."""
        if len(shapes) != 1:
            return (
                f"the model has {len(shapes)} inputs; the data set {self.info.name!r} needs "
                f"one, of shape {_text(self.input)}"
            )
        if tuple(shapes[0]) != self.input:
            return (
                f"input shape {_text(shapes[0])}, the data set {self.info.name!r} needs "
                f"{_text(self.input)} ({self.n_features} features a row, any batch size)"
            )
        return None

    def outputs(self, shapes: list[list[int | None]]) -> str | None:
        """Why these output shapes do not fit, or None."""
        if len(shapes) != 1:
            return (
                f"the model has {len(shapes)} outputs; the data set {self.info.name!r} "
                f"needs one, of shape {_text(self.output)}"
            )
        shape = tuple(shapes[0])
        if len(shape) != 2 or shape[-1] != self.n_outputs:
            return (
                f"output shape {_text(shape)}, the data set {self.info.name!r} needs "
                f"{_text(self.output)} ({self._what_out()})"
            )
        return None


# --- step 1: the archive as data -------------------------------------------------------


def _member(archive: zipfile.ZipFile, name: str, limit: int, content: bytes) -> Any:
    """A JSON member of the archive, read with a bound."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _refuse(f"is not a .keras archive: no {name} in it", content) from None
    if info.file_size > limit:
        raise _refuse(
            f"is not a .keras archive: its {name} is {info.file_size} bytes (at most {limit})",
            content,
        )
    try:
        with archive.open(info) as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise ValueError(f"more than {limit} bytes")
        value = json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise _refuse(f"is not a .keras archive: its {name} is not JSON ({why})", content) from None
    except (OSError, RuntimeError, NotImplementedError, EOFError) as exc:  # encrypted, truncated
        raise _refuse(f"is not a .keras archive: reading {name} failed ({exc})", content) from None
    if not isinstance(value, dict):
        raise _refuse(f"is not a .keras archive: its {name} is not a JSON object", content)
    return value


def _archive(content: bytes) -> dict[str, Any]:
    """The archive's ``config.json``, once the archive passed the bounds."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _refuse(f"is not a .keras archive: not a zip file ({exc})", content) from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise _refuse(
                f"is not a .keras archive: {len(members)} files in it (at most {MAX_MEMBERS})",
                content,
            )
        unpacked = sum(m.file_size for m in members)
        if unpacked > MAX_UNPACKED_BYTES:
            raise _refuse(
                f"is not a .keras archive: it unpacks to {unpacked} bytes "
                f"(at most {MAX_UNPACKED_BYTES})",
                content,
            )
        config = _member(archive, "config.json", MAX_CONFIG_BYTES, content)
        _member(archive, "metadata.json", MAX_METADATA_BYTES, content)
    if not isinstance(config.get("class_name"), str) or not isinstance(config.get("config"), dict):
        raise _refuse(
            "is not a .keras archive: its config.json is not a Keras model "
            "(no class_name and config)",
            content,
        )
    return config


def _shape(value: Any) -> list[int | None] | None:
    if isinstance(value, list) and all(d is None or type(d) is int for d in value):
        return value
    return None


def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers = config["config"].get("layers")
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def _names(value: Any) -> list[str] | None:
    """``input_layers`` / ``output_layers``: ``[name, 0, 0]`` or a list of those."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list):
        return None
    names = [v[0] for v in value if isinstance(v, list) and v and isinstance(v[0], str)]
    return names if len(names) == len(value) else None


def _input_shapes(config: dict[str, Any]) -> list[list[int | None]] | None:
    """The input shapes the config declares plainly, or None (left to Keras)."""
    layers = _layers(config)
    if config["class_name"] == "Sequential":
        first = layers[0] if layers else {}
        if first.get("class_name") == "InputLayer":
            shape = _shape((first.get("config") or {}).get("batch_shape"))
            return None if shape is None else [shape]
        return None
    names = _names(config["config"].get("input_layers"))
    if config["class_name"] != "Functional" or names is None:
        return None
    by_name = {x.get("name"): x for x in layers}
    shapes = []
    for name in names:
        layer = by_name.get(name) or {}
        shape = _shape((layer.get("config") or {}).get("batch_shape"))
        if layer.get("class_name") != "InputLayer" or shape is None:
            return None
        shapes.append(shape)
    return shapes


def _output_shapes(config: dict[str, Any]) -> list[list[int | None]] | None:
    """The output shapes the config declares plainly (Dense output layers), or None."""
    layers = _layers(config)
    if config["class_name"] == "Sequential":
        outs = layers[-1:]
    elif config["class_name"] == "Functional":
        names = _names(config["config"].get("output_layers"))
        if names is None:
            return None
        by_name = {x.get("name"): x for x in layers}
        outs = [by_name.get(n) or {} for n in names]
    else:
        return None
    shapes = []
    for layer in outs:
        units = (layer.get("config") or {}).get("units")
        built = _shape((layer.get("build_config") or {}).get("input_shape"))
        if layer.get("class_name") != "Dense" or type(units) is not int or not built:
            return None
        shapes.append([*built[:-1], units])
    return shapes


def check_archive(content: bytes, needs: Needs) -> None:
    """Step 1: refuse what is plainly not the model, without Keras."""
    config = _archive(content)
    inputs, outputs = _input_shapes(config), _output_shapes(config)
    for why in (
        inputs is not None and needs.inputs(inputs),
        outputs is not None and needs.outputs(outputs),
    ):
        if why:
            raise _refuse(why, content)


# --- step 2: Keras, in a child --------------------------------------------------------


def _child_env(folder: Path) -> dict[str, str]:
    """The child's environment: this process's without the service's settings (``HPO_*``:
    tokens, the database URL), TensorFlow quiet, on one thread and off any GPU, Keras's and
    the temporary files in ``folder``. (A custom family's package may read its own
    variables when the child imports it.)"""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding `service`
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    return {
        **inherited,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": path,
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "KERAS_HOME": str(folder / ".keras"),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _died(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def load_in_child(content: bytes, family: str, n_features: int) -> dict[str, Any]:
    """Step 2's verdict (see :mod:`workers.model_load`).

    Raises:
        Invalid: the child did not judge the file within ``LOAD_TIMEOUT_S``, or was
            killed by a signal while loading it (a crash in Keras or the HDF5 reader).
        CheckUnavailable: no turn within ``LOAD_WAIT_S``, or the child failed before it
            could judge (TensorFlow does not import here).
    """
    if not _TURNS.acquire(timeout=LOAD_WAIT_S):
        raise CheckUnavailable(
            f"{MAX_LOADS} other models are being checked; retry the upload shortly"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-model-check-") as tmp:
            folder = Path(tmp)
            (folder / "model.keras").write_bytes(content)
            command = [
                sys.executable,
                "-m",
                "workers.model_load",
                str(folder),
                family,
                str(n_features),
            ]
            started = time.monotonic()
            try:
                done = subprocess.run(
                    command,
                    env=_child_env(folder),
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=LOAD_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise _refuse(
                    f"Keras did not load it in safe mode within {LOAD_TIMEOUT_S:g} s", content
                ) from None
            took = time.monotonic() - started
            verdict_file = folder / "verdict.json"
            if verdict_file.exists():
                verdict: dict[str, Any] = json.loads(verdict_file.read_text())
                log.info("final model of %d bytes checked in %.1f s", len(content), took)
                return verdict
            tail = done.stderr.decode("utf-8", "replace")[-2000:]
            if done.returncode < 0:
                log.warning("the model check died loading it: %s\n%s", _died(done.returncode), tail)
                raise _refuse(
                    f"Keras crashed loading it in safe mode ({_died(done.returncode)})", content
                )
            log.error("the model check could not run (%s):\n%s", _died(done.returncode), tail)
            raise CheckUnavailable(
                f"the final model could not be checked ({_died(done.returncode)}); the "
                "service's log says why"
            )
    finally:
        _TURNS.release()


def check(content: bytes, info: DatasetInfo, family: str) -> None:
    """Accept ``content`` as the final model of a study on ``info``, or raise.

    Raises:
        Invalid: on the ``file`` field, saying what is wrong with it.
        CheckUnavailable: the check cannot run now (503: retry).
    """
    needs = Needs(info)
    check_archive(content, needs)
    verdict = load_in_child(content, family, needs.n_features)
    if verdict.get("refused"):
        raise _refuse(f"Keras refused it in safe mode: {verdict['refused']}", content)
    for why in (
        verdict.get("inputs") is not None and needs.inputs(verdict["inputs"]),
        verdict.get("outputs") is not None and needs.outputs(verdict["outputs"]),
    ):
        if why:
            raise _refuse(why, content)
    if verdict.get("call_error"):
        raise _refuse(
            f"it failed on 2 rows of {needs.n_features} features: {verdict['call_error']}",
            content,
        )
    called = verdict.get("called")
    if called is not None and called != [2, needs.n_outputs]:
        why = needs.outputs([[None, *called[1:]]])
        raise _refuse(why or f"it answered 2 rows with shape {_text(called)}", content)
