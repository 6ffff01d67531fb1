"""Request and response bodies of the HTTP API (pydantic). Their field descriptions become
the OpenAPI text at ``/docs``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from service.storage.optuna_adapter import PrunerName, SamplerName

Metric = Literal["val_accuracy", "val_loss", "val_mae"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

_FORBID = ConfigDict(extra="forbid")

DbId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Row id (a 32-bit integer).")]


class ModelSpec(BaseModel):
    model_config = _FORBID
    family: str = Field(
        "mlp",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="mlp: dense layers; cnn: conv blocks for image data; or a custom "
        "family registered by an installed package (entry-point group hpo.models).",
    )


class StudyCreate(BaseModel):
    """A study submission."""

    model_config = _FORBID

    name: str = Field(
        pattern=NAME_PATTERN,
        min_length=1,
        max_length=128,
        description="Unique name; also the Optuna study's name. Letters, digits, _ . -",
    )
    dataset: str = Field(description="A built-in data set or the name of an upload.")
    n_trials: int = Field(ge=1, le=10_000, description="Exactly this many trial results.")
    epochs: int = Field(ge=1, le=1_000, description="Training epochs of each trial.")
    search_space: dict[str, Any] | None = Field(
        None, description="Ranges or choices to search, by parameter name."
    )
    fixed: dict[str, Any] | None = Field(None, description="Fixed values, by parameter name.")
    metric: Metric | None = Field(
        None,
        description="The objective, measured every epoch. Default: val_accuracy for "
        "classification, val_mae for regression.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Defaults to the metric's natural direction."
    )
    sampler: SamplerName = Field("tpe", description="Optuna sampler.")
    pruner: PrunerName = Field("median", description="Optuna pruner fed by the epoch reports.")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Makes sampling and training deterministic with one worker.",
    )
    model: ModelSpec = ModelSpec()
    trial_time_limit_s: float | None = Field(
        None,
        gt=0,
        le=7 * 24 * 3600,
        description="A trial still training after this many seconds fails (checked after "
        "each epoch).",
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=100,
        description="Parameters to try first, in order (each a full or partial set; the "
        "rest is sampled).",
    )
    sanity_check: bool = Field(
        True,
        description="Before any trial, check that the model can overfit a handful "
        "of training rows; if it cannot, the study fails instead of spending its budget.",
    )
    tensorboard: bool = Field(
        False,
        description="Workers write TensorBoard logs of each trial under their "
        "artifact directory (workers need the `tensorboard` extra).",
    )


class DatasetOut(BaseModel):
    name: str
    task: Literal["classification", "regression"]
    n_features: int
    n_classes: int | None
    image_shape: list[int] | None
    source: Literal["sklearn", "keras", "upload"]
    description: str
    n_rows: int | None
    sha256: str | None


class FinalModel(BaseModel):
    """The best configuration retrained on train + validation and scored once on test."""

    state: Literal["none", "pending", "running", "ready", "failed"]
    test_metric: str | None = None
    test_value: float | None = None
    reason: str | None = None


class TrialCounts(BaseModel):
    running: int
    complete: int
    pruned: int
    fail: int
    lost: int
    released: int


class BestTrial(BaseModel):
    trial_id: int
    number: int
    value: float
    params: dict[str, Any]


class StudyOut(BaseModel):
    id: int
    name: str
    status: Literal["queued", "running", "completed", "stopped", "failed"]
    reason: str | None = Field(None, description="Why the study failed or stopped.")
    sanity_check: Literal["skipped", "pending", "running", "passed", "failed"]
    dataset: str
    n_trials: int
    epochs: int
    metric: str
    direction: str
    sampler: str
    pruner: str
    seed: int | None
    model: dict[str, Any]
    search_space: dict[str, Any]
    fixed: dict[str, Any]
    trials: TrialCounts
    best: BestTrial | None
    final_model: FinalModel
    trial_time_limit_s: float | None
    warnings: list[str] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrialOut(BaseModel):
    trial_id: int
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    reason: str | None
    epochs_run: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None


WORKER_ID = r"^[^\x00-\x1f\x7f]+$"  # printable: stored in a text column


class WorkerInfo(BaseModel):
    model_config = _FORBID
    id: str = Field(min_length=1, max_length=128, pattern=WORKER_ID)
    host: str | None = Field(None, max_length=255, pattern=WORKER_ID)
    pid: int | None = Field(None, ge=0, le=2**31 - 1)


class LeaseRequest(BaseModel):
    model_config = _FORBID
    worker: WorkerInfo


class LeaseOut(BaseModel):
    """Everything a worker needs for the job: ``kind`` trial (``trial_id`` set), sanity
    (the overfit check) or final (retrain the best ``params``, upload the model)."""

    kind: Literal["trial", "sanity", "final"]
    job_id: int
    trial_id: int | None
    number: int | None
    study_id: int
    study_name: str
    params: dict[str, Any]
    dataset: dict[str, Any]
    model: dict[str, Any]
    epochs: int
    metric: str
    direction: str
    seed: int
    lease_seconds: float
    trial_time_limit_s: float | None
    tensorboard: bool
    max_model_params: int = Field(
        description="Workers refuse to train a bigger model (HPO_MAX_MODEL_PARAMS)."
    )


class WorkerCall(BaseModel):
    model_config = _FORBID
    worker_id: str = Field(min_length=1, max_length=128, pattern=WORKER_ID)


class ReportIn(WorkerCall):
    epoch: int = Field(ge=1, le=100_000, description="1-based epoch number.")
    value: float = Field(allow_inf_nan=False, description="The objective metric this epoch.")
    metrics: dict[str, float] = Field(default_factory=dict)


History = dict[
    Annotated[str, Field(max_length=64)], Annotated[list[float], Field(max_length=100_000)]
]


class CompleteIn(WorkerCall):
    value: float = Field(allow_inf_nan=False)
    epochs_run: int = Field(0, ge=0, le=100_000)
    history: History | None = Field(
        None, max_length=32, description="Per-epoch metrics, stored as history.json."
    )
    train_val_gap: float | None = Field(
        None, allow_inf_nan=False, description="Training minus validation metric at the last epoch."
    )


class FailIn(WorkerCall):
    reason: str = Field(min_length=1, max_length=4000)
    epochs_run: int = Field(0, ge=0, le=100_000)
    history: History | None = Field(None, max_length=32)


class ReleaseIn(WorkerCall):
    reason: str = Field("worker stopping", max_length=4000)


class SanityIn(WorkerCall):
    passed: bool
    detail: str = Field(max_length=4000)


class JobFailIn(WorkerCall):
    reason: str = Field(min_length=1, max_length=4000)


class JobResult(BaseModel):
    job_id: int
    kind: str
    state: str
    reason: str | None


class ActionOut(BaseModel):
    action: Literal["continue", "prune", "stop"]


class TrialResult(BaseModel):
    trial_id: int
    state: str
    value: float | None
    reason: str | None


class ProblemOut(BaseModel):
    """One thing wrong with a request: where, what, and the value given."""

    loc: list[str | int] = Field(
        description='Path of the field, e.g. ["search_space", "learning_rate", "low"].'
    )
    field: str = Field(description="The same path, dotted.")
    msg: str = Field(description="What is wrong and what is allowed.")
    input: Any = Field(None, description="The value given (null when missing).")


class ErrorOut(BaseModel):
    """Every error answer: one readable ``message``; 422s also list each problem."""

    message: str
    detail: list[ProblemOut] | None = None


_ERROR_TEXT = {
    400: "The body could not be parsed at all (not UTF-8 JSON, or broken multipart data).",
    401: "No valid token for this route (the same answer whatever was wrong).",
    404: "No such study, trial, job or data set.",
    409: "Conflicts with the current state (a taken name, a lease held by another "
    "worker, a repeated Idempotency-Key still in progress).",
    413: "The request body, or an uploaded file, is larger than allowed.",
    415: "A JSON body sent without 'Content-Type: application/json'.",
    422: "A value is not allowed: the message names the field, the value and what is allowed.",
    503: "The database is unavailable; retry after the Retry-After seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error answers, all of them ``ErrorOut``."""
    return {s: {"model": ErrorOut, "description": _ERROR_TEXT[s]} for s in statuses}
