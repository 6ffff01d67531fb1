"""Jobs that are not trials, handed out through the same lease as trials:

- ``sanity``: before a study's first trial, one worker checks that the model can overfit a
  handful of training rows (the notes' advice). If it cannot, the study ends ``failed``
  with that reason instead of spending its budget.
- ``final``: when a study completes, one worker retrains the best configuration on train +
  validation for the study's epochs, scores it once on the test split, and uploads the
  ``.keras`` file (with optimizer state).

A study's ``sanity_state`` / ``final_state`` goes pending -> running with one conditional
UPDATE, so one worker gets the job. A job's lease row (kind ``sanity`` or ``final``)
carries the worker and deadline like a trial's; an expired one puts the job back to pending.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute

from search_space import SearchSpace
from search_space.catalog import DatasetInfo
from service.domain import model_check, studies, winners
from service.errors import Conflict, NotFound
from service.states import (
    OPEN_STATUSES,
    Action,
    FinalState,
    JobKind,
    LeaseState,
    SanityState,
    StudyStatus,
)
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, ModelRow, StudyRow, utcnow

log = logging.getLogger(__name__)

MAX_JOB_ATTEMPTS = 3

# A job's state column; SanityState and FinalState share pending, running and failed.
_COLUMN: dict[str, InstrumentedAttribute[str]] = {
    JobKind.SANITY: StudyRow.sanity_state,
    JobKind.FINAL: StudyRow.final_state,
}


def _params(rt: Runtime, kind: str, study: StudyRow) -> dict[str, Any]:
    if kind == JobKind.SANITY:
        spec = study.spec
        space = SearchSpace.parse(
            spec["search_space"], spec["fixed"], family=spec["model"]["family"]
        )
        return space.sane_params()
    best = winners.best(rt, study)
    assert best is not None
    return best.params


_ANY_PENDING = (
    select(StudyRow.id)
    .where(or_(*(column == SanityState.PENDING for column in _COLUMN.values())))
    .limit(1)
)
"""Whether any job waits (one indexed look on every lease, where there rarely is one)."""


def take(rt: Runtime, worker_id: str) -> LeaseRow | None:
    """Hand out a pending final or sanity job (final first: its study is done), or None."""
    with rt.engine.connect() as conn:
        if conn.scalar(_ANY_PENDING) is None:
            return None
    with rt.unit_of_work():
        return _take(rt, worker_id)


def _take(rt: Runtime, worker_id: str) -> LeaseRow | None:
    for kind in (JobKind.FINAL, JobKind.SANITY):
        column = _COLUMN[kind]
        with rt.sessions() as s:
            query = select(StudyRow).where(column == SanityState.PENDING).order_by(StudyRow.id)
            if kind == JobKind.SANITY:
                query = query.where(
                    StudyRow.status.in_(OPEN_STATUSES),
                    StudyRow.optuna_study_id.is_not(None),
                )
            candidates = s.scalars(query).all()
        for study in candidates:
            params = _params(rt, kind, study)  # before anything is written
            now = utcnow()
            # The state change and the lease row commit together: never one without the other.
            with rt.sessions.begin() as s:
                taken = cast(
                    CursorResult[Any],
                    s.execute(
                        update(StudyRow)
                        .where(StudyRow.id == study.id, column == SanityState.PENDING)
                        .values({column: SanityState.RUNNING})
                    ),
                )
                if taken.rowcount != 1:
                    continue
                s.execute(
                    update(StudyRow)
                    .where(StudyRow.id == study.id, StudyRow.status == StudyStatus.QUEUED)
                    .values(status=StudyStatus.RUNNING, started_at=now)
                )
                job = LeaseRow(
                    study_id=study.id,
                    kind=kind,
                    worker_id=worker_id,
                    state=LeaseState.ACTIVE,
                    params=params,
                    epochs_run=0,
                    created_at=now,
                    deadline=now + timedelta(seconds=rt.settings.lease_seconds),
                )
                s.add(job)
            log.info("%s job %s of study %s to %s", kind, job.id, study.name, worker_id)
            return job
    return None


def _own(rt: Runtime, job_id: int, worker_id: str) -> tuple[LeaseRow, StudyRow]:
    with rt.sessions() as s:
        job = s.get(LeaseRow, job_id)
        if job is None or job.kind == JobKind.TRIAL:
            raise NotFound(f"job {job_id} does not exist")
        if job.worker_id != worker_id:
            raise Conflict(f"job {job_id} is leased to worker {job.worker_id!r}, not {worker_id!r}")
        return job, s.get_one(StudyRow, job.study_id)


def _end(
    rt: Runtime,
    job: LeaseRow,
    state: str,
    reason: str | None,
    study_values: dict[str, Any],
    model: bytes | None = None,
) -> LeaseRow:
    """Record a job's end once (a retry of the same end is answered as before)."""
    with rt.sessions.begin() as s:
        changed = cast(
            CursorResult[Any],
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.id == job.id, LeaseRow.state == LeaseState.ACTIVE)
                .values(state=state, reason=reason, finished_at=utcnow())
            ),
        )
        if changed.rowcount == 1:
            s.execute(update(StudyRow).where(StudyRow.id == job.study_id).values(study_values))
            if model is not None:
                s.merge(
                    ModelRow(
                        study_id=job.study_id,
                        content=model,
                        size_bytes=len(model),
                        sha256=hashlib.sha256(model).hexdigest(),
                        created_at=utcnow(),
                    )
                )
        current = s.get_one(LeaseRow, job.id)
    if current.state != state:
        raise Conflict(
            f"job {job.id} is no longer running: it is {current.state}"
            + (f" ({current.reason})" if current.reason else "")
        )
    return current


def heartbeat(rt: Runtime, job_id: int, worker_id: str) -> Action:
    with rt.unit_of_work():
        job, _ = _own(rt, job_id, worker_id)
        with rt.sessions.begin() as s:
            changed = cast(
                CursorResult[Any],
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.id == job.id, LeaseRow.state == LeaseState.ACTIVE)
                    .values(deadline=utcnow() + timedelta(seconds=rt.settings.lease_seconds))
                ),
            )
        if changed.rowcount != 1:
            raise Conflict(f"job {job_id} is no longer running: it is {job.state}")
        return Action.CONTINUE


def _failed_by_sanity(study: StudyRow, why: str) -> dict[str, Any]:
    """What a failed sanity run changes in its study: an open study ends failed, saying why;
    a stopped or finished one keeps its status."""
    if study.status not in OPEN_STATUSES:
        return {}
    return {
        "status": StudyStatus.FAILED,
        "finished_at": utcnow(),
        "reason": f"sanity check failed: {why}",
    }


def sanity_result(
    rt: Runtime, job_id: int, worker_id: str, *, passed: bool, detail: str
) -> LeaseRow:
    """The sanity run's verdict: the study proceeds, or ends failed with the reason."""
    with rt.unit_of_work():
        job, study = _own(rt, job_id, worker_id)
        if job.kind != JobKind.SANITY:
            raise Conflict(f"job {job_id} is a {job.kind} job, not a sanity run")
        if passed:
            return _end(rt, job, LeaseState.COMPLETE, detail, {"sanity_state": SanityState.PASSED})
        values = {"sanity_state": SanityState.FAILED, **_failed_by_sanity(study, detail)}
        return _end(rt, job, LeaseState.FAIL, detail, values)


def model_result(
    rt: Runtime, job_id: int, worker_id: str, *, test_value: float, content: bytes
) -> LeaseRow:
    """The retrained best model and its test score, once the model passed
    :func:`model_check.check` (outside the write lock: it takes seconds). A retry of an
    accepted upload is answered as before, unchecked: nothing more is stored.

    Raises:
        Invalid: the model is not what the study needs; nothing is stored and the job
            stays with its worker, to retry or fail.
    """
    job, study = _own(rt, job_id, worker_id)
    if job.kind != JobKind.FINAL:
        raise Conflict(f"job {job_id} is a {job.kind} job, not a final model")
    if job.state == LeaseState.ACTIVE:
        info = DatasetInfo.from_json(study.spec["dataset_info"])
        model_check.check(content, info, study.spec["model"]["family"])
    with rt.unit_of_work():
        job, _ = _own(rt, job_id, worker_id)
        if job.state == LeaseState.ACTIVE:
            with rt.sessions() as s:
                rt.optuna.attach_model(s.get_one(StudyRow, job.study_id), content)
        return _end(
            rt,
            job,
            LeaseState.COMPLETE,
            None,
            {"final_state": FinalState.READY, "test_metric": test_value},
            model=content,
        )


def fail(rt: Runtime, job_id: int, worker_id: str, reason: str) -> LeaseRow:
    """The job could not run (an exception, the data set unavailable)."""
    with rt.unit_of_work():
        job, _ = _own(rt, job_id, worker_id)
        if job.kind == JobKind.FINAL:
            return _end(
                rt,
                job,
                LeaseState.FAIL,
                reason,
                {"final_state": FinalState.FAILED, "final_reason": reason},
            )
        return sanity_result(rt, job_id, worker_id, passed=False, detail=reason)


def give_back(rt: Runtime, job: LeaseRow, state: str, reason: str) -> None:
    """An expired or released job goes back to pending for another worker, up to
    ``MAX_JOB_ATTEMPTS`` times; then it fails (and a sanity run fails its study), so a job
    that kills its workers cannot hold the queue forever."""
    column = _COLUMN[job.kind]
    with rt.sessions.begin() as s:
        changed = cast(
            CursorResult[Any],
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.id == job.id, LeaseRow.state == LeaseState.ACTIVE)
                .values(state=state, reason=reason, finished_at=utcnow())
            ),
        )
        if changed.rowcount != 1:
            return
        attempts = (
            s.scalar(
                select(func.count())
                .select_from(LeaseRow)
                .where(LeaseRow.study_id == job.study_id, LeaseRow.kind == job.kind)
            )
            or 0
        )
        values: dict[str, Any] = {column.key: SanityState.PENDING}
        if attempts >= MAX_JOB_ATTEMPTS:
            why = f"{job.kind} job did not finish in {attempts} attempts; the last: {reason}"
            values = {column.key: SanityState.FAILED}
            if job.kind == JobKind.FINAL:
                values["final_reason"] = why
            else:
                values.update(_failed_by_sanity(s.get_one(StudyRow, job.study_id), why))
        s.execute(
            update(StudyRow)
            .where(StudyRow.id == job.study_id, column == SanityState.RUNNING)
            .values(values)
        )
    log.warning("%s job %s %s: %s", job.kind, job.id, state, reason)


def release(rt: Runtime, job_id: int, worker_id: str, reason: str) -> LeaseRow:
    """The worker cannot run the job (e.g. it lacks the data set): another worker may."""
    with rt.unit_of_work():
        job, _ = _own(rt, job_id, worker_id)
        if job.state == LeaseState.ACTIVE:
            give_back(rt, job, LeaseState.RELEASED, reason)
        with rt.sessions() as s:
            return s.get_one(LeaseRow, job.id)


def model_file(rt: Runtime, study_id: int) -> tuple[StudyRow, bytes]:
    study = studies.get(rt, study_id)
    with rt.sessions() as s:
        row = s.get(ModelRow, study_id)
    if row is None:
        raise NotFound(
            f"study {study.name!r} has no model yet (final model: "
            f"{study.final_state}" + (f", {study.final_reason}" if study.final_reason else "") + ")"
        )
    return study, row.content
