"""Request and response bodies of the HTTP API (pydantic). Their field descriptions become
the OpenAPI text at ``/docs``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from service.optuna_bridge import PrunerName, SamplerName

Metric = Literal["val_accuracy", "val_loss"]

_FORBID = ConfigDict(extra="forbid")

DbId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Row id (a 32-bit integer).")]


class ModelSpec(BaseModel):
    model_config = _FORBID
    family: Literal["mlp"] = Field("mlp", description="The model family to build.")


class StudyCreate(BaseModel):
    """A study submission."""

    model_config = _FORBID

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        min_length=1,
        max_length=128,
        description="Unique name; also the Optuna study's name. Letters, digits, _ . -",
    )
    dataset: str = Field(description="A built-in data set: digits.")
    n_trials: int = Field(ge=1, le=10_000, description="Exactly this many trial results.")
    epochs: int = Field(ge=1, le=1_000, description="Training epochs of each trial.")
    search_space: dict[str, Any] | None = Field(
        None, description="Ranges or choices to search, by parameter name."
    )
    fixed: dict[str, Any] | None = Field(None, description="Fixed values, by parameter name.")
    metric: Metric = Field("val_accuracy", description="The objective, measured every epoch.")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Defaults to the metric's natural direction."
    )
    sampler: SamplerName = Field("tpe", description="Optuna sampler.")
    pruner: PrunerName = Field("median", description="Optuna pruner fed by the epoch reports.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Makes sampling and "
                             "training deterministic with one worker.")
    model: ModelSpec = ModelSpec()


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
    status: Literal["queued", "running", "completed", "stopped"]
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


class WorkerInfo(BaseModel):
    model_config = _FORBID
    id: str = Field(min_length=1, max_length=128)
    host: str | None = Field(None, max_length=255)
    pid: int | None = None


class LeaseRequest(BaseModel):
    model_config = _FORBID
    worker: WorkerInfo


class LeaseOut(BaseModel):
    """Everything a worker needs to train the trial."""

    trial_id: int
    number: int
    study_id: int
    study_name: str
    params: dict[str, Any]
    dataset: str
    model: dict[str, Any]
    epochs: int
    metric: str
    direction: str
    seed: int
    lease_seconds: float


class WorkerCall(BaseModel):
    model_config = _FORBID
    worker_id: str = Field(min_length=1, max_length=128)


class ReportIn(WorkerCall):
    epoch: int = Field(ge=1, le=100_000, description="1-based epoch number.")
    value: float = Field(allow_inf_nan=False, description="The objective metric this epoch.")
    metrics: dict[str, float] = Field(default_factory=dict)


class CompleteIn(WorkerCall):
    value: float = Field(allow_inf_nan=False)
    epochs_run: int = Field(0, ge=0, le=100_000)


class FailIn(WorkerCall):
    reason: str = Field(min_length=1, max_length=4000)
    epochs_run: int = Field(0, ge=0, le=100_000)


class ReleaseIn(WorkerCall):
    reason: str = Field("worker stopping", max_length=4000)


class ActionOut(BaseModel):
    action: Literal["continue", "prune", "stop"]


class TrialResult(BaseModel):
    trial_id: int
    state: str
    value: float | None
    reason: str | None
