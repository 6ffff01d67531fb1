"""Request and response bodies of the users' API (pydantic; the trial protocol's are in
``service.protocol``). Their field descriptions become the OpenAPI text at ``/docs``.

Pure pydantic, no FastAPI: :mod:`service.client` parses the answers with the same models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol import Finding, Flag, Int, Number
from service.states import FinalState, Pruner, Sampler, SanityState, StudyStatus, TrialState

Metric = Literal["val_accuracy", "val_loss", "val_mae"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

_FORBID = ConfigDict(extra="forbid")


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
    n_trials: Int = Field(ge=1, le=10_000, description="Exactly this many trial results.")
    epochs: Int = Field(ge=1, le=1_000, description="Training epochs of each trial.")
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
    sampler: Sampler = Field(Sampler.TPE, description="Optuna sampler.")
    pruner: Pruner = Field(Pruner.MEDIAN, description="Optuna pruner fed by the epoch reports.")
    seed: Int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Makes sampling and training deterministic with one worker.",
    )
    model: ModelSpec = ModelSpec()
    trial_time_limit_s: Number | None = Field(
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
    epoch_budget: Int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="The epochs all trials together may train: no trial starts that could "
        "take the study past it, and the study completes when no other trial fits (a "
        "pruned trial is charged the epochs it ran). Default: no limit but n_trials.",
    )
    priors: Flag = Field(
        True,
        description="Try the configurations the design notes recommend first, taken into "
        "the search space (after `enqueue`); false starts from the sampler alone.",
    )
    reevaluate_top: Int | None = Field(
        None,
        ge=0,
        le=10,
        description="At the end, train the best this many configurations again, on fresh "
        "seeds and other folds of train + validation, and name the best mean the winner (0, "
        "or 1, turns it off). Skipped when it would take more than a quarter of the budget "
        "(trials, or epochs). Unset: 2 (run twice each) where that fits, else 3 (once each).",
    )
    reevaluate_repeats: Int | None = Field(
        None,
        ge=1,
        le=5,
        description="How many runs each re-evaluated one gets: run r on fold r (a fresh seed, "
        "and mostly other validation rows than the search judged it on). Unset: 2 where "
        "that fits a quarter of the budget, else 1.",
    )
    sanity_check: Flag = Field(
        True,
        description="Before any trial, check that the model can overfit a handful "
        "of training rows; if it cannot, the study fails instead of spending its budget.",
    )
    tensorboard: Flag = Field(
        False,
        description="Workers write TensorBoard logs of each trial under their "
        "artifact directory (workers need the `tensorboard` extra).",
    )
    diagnostics: Flag = Field(
        True,
        description="Workers probe each trial's model at a few epochs and record what went "
        "wrong (findings: vanishing gradients, dead units, ...); false turns it off.",
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

    state: FinalState
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
    value: float = Field(description="Its objective value; the mean over its evaluations.")
    params: dict[str, Any]
    evaluations: int = Field(
        1, description="Its trials: more than one once the best were re-evaluated."
    )


class StudyOut(BaseModel):
    id: int
    name: str
    status: StudyStatus
    reason: str | None = Field(None, description="Why the study failed or stopped.")
    sanity_check: SanityState
    dataset: str
    n_trials: int
    epochs: int
    epoch_budget: int | None
    epochs_charged: int = Field(
        description="Epochs charged to the budget: those its trials ran, and the full "
        "epochs of each running one."
    )
    priors: list[dict[str, Any]] = Field(
        default_factory=list, description="The notes' configurations tried first."
    )
    reevaluations: int = Field(
        0, description="Trials kept at the end to re-evaluate the best configurations."
    )
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
    state: TrialState
    params: dict[str, Any] = Field(
        description="The whole configuration: sampled and fixed values alike."
    )
    value: float | None
    reason: str | None
    epochs_run: int
    metrics: dict[str, float] | None = Field(
        None, description="The latest epoch's metrics, as the worker reported them."
    )
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    findings: list[Finding] = Field(
        default_factory=list,
        description="What the worker's probe found wrong (codes: README, 'Findings').",
    )
    reevaluates: int | None = Field(
        None,
        description="A re-evaluation of the best configurations: the number of the trial "
        "it repeats (README, 'Where a search starts, and which trial wins'); null for a "
        "search trial.",
    )
    fold: int = Field(
        0,
        description="The split it trained on: 0 the fixed split; a re-evaluation's fold "
        "1 and up of train + validation.",
    )


class ValueFindings(BaseModel):
    param: str
    value: str = Field(description="The value, or a third of a numeric range.")
    trials: int = Field(description="Trials with that value.")
    code: str
    count: int = Field(description="Of those, trials with the finding.")
    text: str


class FindingCounts(BaseModel):
    by_code: dict[str, int] = Field(description="Trials carrying each finding.")
    by_value: list[ValueFindings] = Field(
        description="Findings counted per parameter value, the most telling first."
    )


class Advice(BaseModel):
    param: str | None
    value: str | None
    action: str = Field(description="What to change (reflected in suggested_spec).")
    evidence: str
    why: str = Field(description="What the notes say about it.")


class ReportOut(BaseModel):
    study: str
    trials: int = Field(description="Trials with a result (complete, pruned, failed).")
    best: dict[str, Any] | None
    importances: dict[str, float] = Field(
        description="fANOVA importance of each searched parameter (sums to 1)."
    )
    findings: FindingCounts
    advice: list[Advice]
    suggested_spec: dict[str, Any] = Field(
        description="This study's spec, narrowed where the evidence is strong: a body for "
        "POST /studies."
    )


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
