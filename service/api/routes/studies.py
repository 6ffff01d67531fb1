"""Studies: submit, list, read, stop, and their trials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.api.auth import USER
from service.api.bodies import JsonRoute
from service.api.deps import DbId, RuntimeDep
from service.api.idempotency import IdempotencyKey, respond_once
from service.api.schemas import (
    NAME_PATTERN,
    BestTrial,
    FinalModel,
    ReportOut,
    StudyCreate,
    StudyOut,
    TrialCounts,
    TrialOut,
    error_responses,
)
from service.domain import jobs, studies, study_report, winners
from service.states import TrialState
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow

router = APIRouter(
    route_class=JsonRoute,
    prefix="/studies",
    tags=["studies"],
    dependencies=[USER],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)


def _studies_out(rt: Runtime, rows: list[StudyRow]) -> list[StudyOut]:
    """The answers for ``rows``, with their counts and best trials read in two queries."""
    ids = [row.id for row in rows]
    counts, best = studies.counts_of(rt, ids), winners.best_of(rt, ids)
    return [_study_out(row, counts[row.id], best.get(row.id)) for row in rows]


def _one(rt: Runtime, row: StudyRow, warnings: list[str] | None = None) -> StudyOut:
    out = _studies_out(rt, [row])[0]
    return out.model_copy(update={"warnings": warnings or []})


def _study_out(row: StudyRow, counts: dict[str, int], best: winners.Best | None) -> StudyOut:
    spec = row.spec
    return StudyOut(
        id=row.id,
        name=row.name,
        status=row.status,
        reason=row.reason,
        sanity_check=row.sanity_state,
        dataset=row.dataset,
        n_trials=row.n_trials,
        epochs=row.epochs,
        epoch_budget=row.epoch_budget,
        epochs_charged=row.epochs_charged,
        priors=spec.get("priors", []),
        reevaluations=winners.of_study(row),
        metric=row.metric,
        direction=row.direction,
        sampler=spec["sampler"],
        pruner=spec["pruner"],
        seed=spec["seed"],
        model=spec["model"],
        search_space=spec["search_space"],
        fixed=spec["fixed"],
        trials=TrialCounts(**counts),
        best=None
        if best is None
        else BestTrial(
            trial_id=best.trial_id,
            number=best.number,
            value=best.value,
            params=best.params,
            evaluations=best.evaluations,
        ),
        final_model=FinalModel(
            state=row.final_state,
            test_metric=row.metric.replace("val_", "test_", 1),
            test_value=row.test_metric,
            reason=row.final_reason,
        ),
        trial_time_limit_s=spec.get("trial_time_limit_s"),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _new_study(body: StudyCreate) -> studies.NewStudy:
    """The submission as plain values for the domain."""
    fields = body.model_dump(exclude={"model"})
    return studies.NewStudy(**fields, model_family=body.model.family)


def _trial_out(row: LeaseRow) -> TrialOut:
    duration = None
    if row.finished_at is not None:
        duration = (row.finished_at - row.created_at).total_seconds()
    return TrialOut(
        trial_id=row.trial_id or 0,
        number=row.trial_number or 0,
        state=TrialState.of(row.state),
        params=row.params or {},
        value=row.value,
        reason=row.reason,
        epochs_run=row.epochs_run,
        metrics=row.metrics,
        worker_id=row.worker_id,
        started_at=row.created_at,
        finished_at=row.finished_at,
        duration_s=duration,
        findings=row.findings or [],
        fold=row.fold,
        reevaluates=row.reevaluates,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyOut)
def create_study(
    body: StudyCreate, rt: RuntimeDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Submit a study. 409 if the name is taken; 422 naming the field if the spec is invalid.
    With an ``Idempotency-Key``, a retry gets the first answer."""

    def create() -> StudyOut:
        row, warnings = studies.create(rt, _new_study(body))
        return _one(rt, row, warnings)

    return respond_once(rt, "POST /studies", idempotency_key, body, create, status.HTTP_201_CREATED)


NameFilter = Annotated[
    str | None,
    Query(
        pattern=NAME_PATTERN,
        max_length=128,
        description="Only the study of this name (an empty list if there is none).",
    ),
]


@router.get("", response_model=list[StudyOut])
def list_studies(rt: RuntimeDep, name: NameFilter = None) -> list[StudyOut]:
    """All studies, oldest first; with ``name``, only that one."""
    return _studies_out(rt, studies.list_all(rt, name=name))


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study_id: DbId, rt: RuntimeDep) -> StudyOut:
    """A study's status, trial counts per state, and best trial so far."""
    return _one(rt, studies.get(rt, study_id))


@router.get("/{study_id}/trials", response_model=list[TrialOut])
def list_trials(study_id: DbId, rt: RuntimeDep) -> list[TrialOut]:
    """Every trial handed out: state, parameters, value, failure reason, epochs, duration."""
    return [_trial_out(row) for row in studies.trials(rt, study_id)]


@router.get("/{study_id}/report", response_model=ReportOut)
def get_report(study_id: DbId, rt: RuntimeDep) -> ReportOut:
    """Why trials went wrong and what to change: parameter importances, the findings
    counted per parameter value, advice traced to the notes and a suggested next spec."""
    _, report = study_report.build(rt, study_id)
    return ReportOut.model_validate(report)


@router.post("/{study_id}/report", response_model=ReportOut)
def save_report(study_id: DbId, rt: RuntimeDep) -> ReportOut:
    """The report, also saved where the Optuna dashboard shows it: the study's note and
    PNG artifacts (done by itself when the best model is ready)."""
    row, report = study_report.build(rt, study_id)
    study_report.save(rt, row, report)
    return ReportOut.model_validate(report)


@router.post("/{study_id}/stop", response_model=StudyOut)
def stop_study(study_id: DbId, rt: RuntimeDep) -> StudyOut:
    """Hand out no more trials; running trials are told to stop at their next report."""
    return _one(rt, studies.stop(rt, study_id))


@router.get(
    "/{study_id}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"description": "No model yet: see the study's final_model."},
    },
)
def download_model(study_id: DbId, rt: RuntimeDep) -> Response:
    """The best configuration retrained on train + validation, as a ``.keras`` file with
    its optimizer state (``keras.models.load_model`` reads it)."""
    study, content = jobs.model_file(rt, study_id)
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{study.name}-best.keras"'},
    )
