"""The trial protocol on the wire: every body a worker sends or receives, one name each.

Both sides use these models: the API parses requests and writes answers with them
(``service.api.routes.trials`` and ``jobs``), the worker's client writes requests and
parses answers with them (``workers.client``). Importing this module loads pydantic and
``search_space.catalog``, never TensorFlow, Keras or FastAPI (``tests/test_layers.py``).

The calls, all under the worker token:

1. ``POST /trials/lease`` with :class:`LeaseRequest` → :class:`Lease` (or 204: no work).
2. ``POST /trials/{id}/report`` with :class:`ReportIn` → :class:`ActionOut`; also
   ``/heartbeat`` with :class:`WorkerCall`.
3. ``POST /trials/{id}/complete`` (:class:`CompleteIn`), ``/fail`` (:class:`FailIn`) or
   ``/release`` (:class:`ReleaseIn`) → :class:`TrialResult`. Each is idempotent. A
   pruned trial's findings follow in ``POST /trials/{id}/findings`` (:class:`FindingsIn`).
4. Jobs that are not trials: ``POST /jobs/{id}/heartbeat`` (:class:`WorkerCall`),
   ``/sanity`` (:class:`SanityIn`), ``/fail`` and ``/release`` (:class:`JobFailIn`),
   ``/model`` (a form with the ``.keras`` file) → :class:`JobResult`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from diagnostics.codes import Code
from search_space.catalog import DatasetInfo
from service.states import Action, JobKind

_FORBID = ConfigDict(extra="forbid")

WORKER_ID = r"^[^\x00-\x1f\x7f]+$"  # printable: stored in a text column
MAX_TEXT = 4000
"""The longest reason or detail a worker may send."""

# Request fields take the JSON type they name and nothing pydantic would convert: a
# study of `"n_trials": true` had 1 trial, and of `"5"`, 5.
Int = Annotated[int, Strict()]
"""An integer as JSON writes one: not ``true``, not ``"5"``, not ``5.0``."""
Number = Annotated[float, Strict()]
"""A number (``5`` or ``5.0``), not ``true`` or ``"5"``."""
Flag = Annotated[bool, Strict()]
"""``true`` or ``false``, not ``1`` or ``"yes"``."""


class WorkerInfo(BaseModel):
    """Who is asking: a unique id, and where it runs (shown by ``GET /workers``)."""

    model_config = _FORBID
    id: str = Field(min_length=1, max_length=128, pattern=WORKER_ID)
    host: str | None = Field(None, max_length=255, pattern=WORKER_ID)
    pid: Int | None = Field(None, ge=0, le=2**31 - 1)


class LeaseRequest(BaseModel):
    model_config = _FORBID
    worker: WorkerInfo


class ModelRef(BaseModel):
    """The model family a study trains: ``mlp``, ``cnn`` or a registered custom one."""

    family: str


class Lease(BaseModel):
    """Everything a worker needs for the job: ``kind`` trial (``trial_id`` set), sanity
    (the overfit check) or final (retrain the best ``params``, upload the model)."""

    kind: JobKind
    job_id: int
    trial_id: int | None
    number: int | None
    study_id: int
    study_name: str
    params: dict[str, Any] = Field(
        description="The whole configuration: the sampled and the fixed values."
    )
    dataset: DatasetInfo
    model: ModelRef
    epochs: int
    metric: str
    direction: str
    seed: int
    fold: int = Field(
        0,
        ge=0,
        description="The split to train on: 0 the fixed one, 1 and up a re-evaluation's "
        "fold of train + validation (``search_space.splits``).",
    )
    lease_seconds: float
    trial_time_limit_s: float | None
    tensorboard: bool
    diagnostics: bool = Field(
        True, description="Probe the model at a few epochs and send findings with the result."
    )
    max_model_params: int = Field(
        description="Workers refuse to train a bigger model (HPO_MAX_MODEL_PARAMS)."
    )


class WorkerCall(BaseModel):
    model_config = _FORBID
    worker_id: str = Field(min_length=1, max_length=128, pattern=WORKER_ID)


Metrics = dict[Annotated[str, Field(max_length=64)], Annotated[Number, Field(allow_inf_nan=False)]]


class ReportIn(WorkerCall):
    epoch: Int = Field(ge=1, le=100_000, description="1-based epoch number.")
    value: Number = Field(allow_inf_nan=False, description="The objective metric this epoch.")
    metrics: Metrics = Field(
        default_factory=dict,
        max_length=64,
        description="Every metric of the epoch (loss, accuracy, val_loss, ...); the latest "
        "are shown with the trial while it runs.",
    )


History = dict[
    Annotated[str, Field(max_length=64)], Annotated[list[Number], Field(max_length=100_000)]
]


class Finding(BaseModel):
    """Something the worker's probe found wrong with a trial (``diagnostics.codes``)."""

    model_config = _FORBID
    code: Code
    epoch: Int = Field(ge=0, le=100_000, description="The epoch it was seen at (1-based).")
    layer: str | None = Field(None, max_length=128, description="The layer, where one is to blame.")
    value: Number = Field(allow_inf_nan=False, description="What was measured.")
    threshold: Number = Field(allow_inf_nan=False, description="The limit it crossed.")
    message: str = Field(max_length=1000, description="What it means and what to change.")


Findings = Annotated[list[Finding], Field(max_length=len(Code) * 2)]


class CompleteIn(WorkerCall):
    value: Number = Field(allow_inf_nan=False)
    epochs_run: Int = Field(0, ge=0, le=100_000)
    history: History | None = Field(
        None, max_length=32, description="Per-epoch metrics, stored as history.json."
    )
    train_val_gap: Number | None = Field(
        None, allow_inf_nan=False, description="Training minus validation metric at the last epoch."
    )
    findings: Findings = Field(default_factory=list)
    diagnostics_s: Number | None = Field(
        None, ge=0, le=1e6, description="Seconds the worker's probe took in this trial."
    )


class FailIn(WorkerCall):
    reason: str = Field(min_length=1, max_length=MAX_TEXT)
    epochs_run: Int = Field(0, ge=0, le=100_000)
    history: History | None = Field(None, max_length=32)
    findings: Findings = Field(default_factory=list)
    diagnostics_s: Number | None = Field(
        None, ge=0, le=1e6, description="Seconds the worker's probe took in this trial."
    )


class FindingsIn(WorkerCall):
    """The findings of a trial the service pruned (its result was the prune itself)."""

    findings: Findings


class ReleaseIn(WorkerCall):
    reason: str = Field("worker stopping", max_length=MAX_TEXT)


class SanityIn(WorkerCall):
    passed: Flag
    detail: str = Field(max_length=MAX_TEXT)


class JobFailIn(WorkerCall):
    reason: str = Field(min_length=1, max_length=MAX_TEXT)


class JobResult(BaseModel):
    job_id: int
    kind: JobKind
    state: str
    reason: str | None


class ActionOut(BaseModel):
    action: Action


class TrialResult(BaseModel):
    trial_id: int
    state: str
    value: float | None
    reason: str | None


def finite(values: dict[str, float]) -> dict[str, float]:
    """The finite entries only: JSON has no NaN, and the service refuses one."""
    return {k: v for k, v in values.items() if math.isfinite(v)}


def finite_history(history: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
    """A history without non-finite values (a diverged epoch's are left out)."""
    if not history:
        return None
    return {k: [v for v in vs if math.isfinite(v)] for k, vs in history.items()}
