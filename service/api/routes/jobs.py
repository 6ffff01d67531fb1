"""The worker protocol for jobs that are not trials: sanity runs and final models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, File, Form, UploadFile

from service.api.auth import WORKER
from service.api.bodies import JsonRoute
from service.api.deps import DbId, RuntimeDep
from service.api.limits import MAX_MODEL_BYTES
from service.api.schemas import error_responses
from service.domain import jobs, study_report, workers_seen
from service.errors import Invalid
from service.protocol import ActionOut, JobFailIn, JobResult, SanityIn, WorkerCall
from service.storage.tables import LeaseRow

router = APIRouter(
    route_class=JsonRoute,
    prefix="/jobs",
    tags=["worker protocol"],
    dependencies=[WORKER],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)


def _result(rt: RuntimeDep, row: LeaseRow) -> JobResult:
    workers_seen.seen(rt, row.worker_id, job_id=None)  # the job is over for its worker
    return JobResult(job_id=row.id, kind=row.kind, state=row.state, reason=row.reason)


@router.post("/{job_id}/heartbeat", response_model=ActionOut)
def heartbeat(job_id: DbId, body: WorkerCall, rt: RuntimeDep) -> ActionOut:
    """Renew a job's lease while it runs."""
    action = jobs.heartbeat(rt, job_id, body.worker_id)
    workers_seen.seen(rt, body.worker_id)
    return ActionOut(action=action)


@router.post("/{job_id}/sanity", response_model=JobResult)
def sanity(job_id: DbId, body: SanityIn, rt: RuntimeDep) -> JobResult:
    """The sanity run's verdict; a failed one ends the study ``failed`` with the detail."""
    return _result(
        rt, jobs.sanity_result(rt, job_id, body.worker_id, passed=body.passed, detail=body.detail)
    )


@router.post("/{job_id}/model", response_model=JobResult)
def upload_model(
    job_id: DbId,
    rt: RuntimeDep,
    worker_id: Annotated[str, Form(min_length=1, max_length=128)],
    test_value: Annotated[float, Form(allow_inf_nan=False)],
    file: Annotated[UploadFile, File(description="The .keras file.")],
    background: BackgroundTasks,
) -> JobResult:
    """The retrained best model (``.keras``) and its score on the test split.

    The model is accepted only if Keras loads it in safe mode with the input and output
    shapes the study's data set needs (``service.domain.model_check``; a few seconds, in
    a child process). Otherwise ``422`` naming ``file`` and what is wrong; nothing is
    stored and the job stays leased to the worker, which may retry or fail it."""
    content = file.file.read(MAX_MODEL_BYTES + 1)
    if len(content) > MAX_MODEL_BYTES:
        raise Invalid(
            ("file",),
            f"must be a .keras file of at most {MAX_MODEL_BYTES} bytes",
            f"more than {MAX_MODEL_BYTES} bytes",
        )
    row = jobs.model_result(rt, job_id, worker_id, test_value=test_value, content=content)
    background.add_task(study_report.save_quietly, rt, row.study_id)
    return _result(rt, row)


@router.post("/{job_id}/release", response_model=JobResult)
def release(job_id: DbId, body: JobFailIn, rt: RuntimeDep) -> JobResult:
    """This worker cannot run the job (e.g. it lacks the data set); give it to another."""
    return _result(rt, jobs.release(rt, job_id, body.worker_id, body.reason))


@router.post("/{job_id}/fail", response_model=JobResult)
def fail(job_id: DbId, body: JobFailIn, rt: RuntimeDep) -> JobResult:
    """The job could not run; a failed sanity run fails the study."""
    return _result(rt, jobs.fail(rt, job_id, body.worker_id, body.reason))
