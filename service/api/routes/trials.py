"""The worker protocol: lease a trial, report epochs, complete, fail or release it."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response, status

from service.api.auth import WORKER
from service.api.bodies import JsonRoute
from service.api.deps import DbId, RuntimeDep
from service.api.schemas import error_responses
from service.domain import findings, leases, reports, workers_seen
from service.protocol import (
    ActionOut,
    CompleteIn,
    FailIn,
    FindingsIn,
    Lease,
    LeaseRequest,
    ReleaseIn,
    ReportIn,
    TrialResult,
    WorkerCall,
)

router = APIRouter(
    route_class=JsonRoute,
    prefix="/trials",
    tags=["worker protocol"],
    dependencies=[WORKER],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)


def _result(row: reports.Outcome) -> TrialResult:
    return TrialResult(
        trial_id=row.trial_id or 0, state=row.state, value=row.value, reason=row.reason
    )


_AFTER_LEASE = {
    "trial": ("report", "heartbeat", "complete", "fail", "findings", "release"),
    "job": ("heartbeat", "sanity", "model", "release", "fail"),
}
LEASE_LINKS = {
    f"{kind}_{call}": {
        "operationRef": f"#/paths/~1{kind}s~1{{{kind}_id}}~1{call}/post",
        "parameters": {f"{kind}_id": f"$response.body#/{kind}_id"},
        "requestBody": {"worker_id": "$request.body#/worker/id"},
        "description": f"The leased {kind}'s {call}, by the worker that holds the lease.",
    }
    for kind, calls in _AFTER_LEASE.items()
    for call in calls
}
"""OpenAPI links from a lease to the calls that follow it (schemathesis's stateful
fuzzing follows them: benchmarks/fuzz.py)."""


@router.post(
    "/lease",
    response_model=Lease,
    responses={
        200: {"links": LEASE_LINKS},
        204: {"description": "No work: no open study has budget left."},
    },
)
def lease_trial(body: LeaseRequest, rt: RuntimeDep) -> Lease | Response:
    """Lease the next piece of work: a final model to retrain, a sanity run, or the next
    trial of the oldest open study, with its parameters and how to train it."""
    started = time.perf_counter()
    work = leases.lease(rt, body.worker.id, host=body.worker.host, pid=body.worker.pid)
    rt.metrics.lease_latency.observe(time.perf_counter() - started)
    if work is not None:
        rt.metrics.leases.labels(work.kind).inc()
    workers_seen.seen(
        rt,
        body.worker.id,
        host=body.worker.host,
        pid=body.worker.pid,
        job_id=None if work is None else work.job_id,
    )
    if work is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return work


@router.post("/{trial_id}/report", response_model=ActionOut)
def report_epoch(trial_id: DbId, body: ReportIn, rt: RuntimeDep) -> ActionOut:
    """One epoch's objective value; renews the lease. Answers continue, prune or stop."""
    action = reports.report(
        rt, trial_id, body.worker_id, body.epoch, body.value, metrics=body.metrics
    )
    workers_seen.seen(rt, body.worker_id)
    return ActionOut(action=action)


@router.post("/{trial_id}/heartbeat", response_model=ActionOut)
def heartbeat(trial_id: DbId, body: WorkerCall, rt: RuntimeDep) -> ActionOut:
    """Renew the lease between reports (long epochs)."""
    action = reports.heartbeat(rt, trial_id, body.worker_id)
    workers_seen.seen(rt, body.worker_id)
    return ActionOut(action=action)


@router.post("/{trial_id}/complete", response_model=TrialResult)
def complete_trial(trial_id: DbId, body: CompleteIn, rt: RuntimeDep) -> TrialResult:
    """The trial's final objective value. Idempotent: a retry counts once."""
    row = reports.complete(
        rt,
        trial_id,
        body.worker_id,
        body.value,
        body.epochs_run,
        history=body.history,
        train_val_gap=body.train_val_gap,
        findings=[f.model_dump(mode="json") for f in body.findings],
        diagnostics_s=body.diagnostics_s,
    )
    workers_seen.seen(rt, body.worker_id, job_id=None)
    return _result(row)


@router.post("/{trial_id}/fail", response_model=TrialResult)
def fail_trial(trial_id: DbId, body: FailIn, rt: RuntimeDep) -> TrialResult:
    """The trial failed (non-finite loss, an exception); it counts as a result."""
    row = reports.fail(
        rt,
        trial_id,
        body.worker_id,
        body.reason,
        body.epochs_run,
        history=body.history,
        findings=[f.model_dump(mode="json") for f in body.findings],
        diagnostics_s=body.diagnostics_s,
    )
    workers_seen.seen(rt, body.worker_id, job_id=None)
    return _result(row)


@router.post("/{trial_id}/findings", response_model=TrialResult)
def trial_findings(trial_id: DbId, body: FindingsIn, rt: RuntimeDep) -> TrialResult:
    """What the worker found wrong with a trial the service pruned (sent after the prune)."""
    row = findings.attach_findings(
        rt, trial_id, body.worker_id, [f.model_dump(mode="json") for f in body.findings]
    )
    return _result(row)


@router.post("/{trial_id}/release", response_model=TrialResult)
def release_trial(trial_id: DbId, body: ReleaseIn, rt: RuntimeDep) -> TrialResult:
    """Give the trial back unfinished; its parameters run again elsewhere."""
    row = reports.release(rt, trial_id, body.worker_id, body.reason)
    workers_seen.seen(rt, body.worker_id, job_id=None)
    return _result(row)
