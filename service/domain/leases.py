"""Handing out work: ``lease`` gives a worker the next job, final model or sanity run
first, else a trial of the oldest open study with budget left.

Invariants (``service.domain.reports`` keeps the rest of them):
- A study's ``slots_used`` (active leases + counted results) never exceeds ``n_trials``:
  a slot is taken by one conditional ``UPDATE ... WHERE slots_used < n_trials``, atomic on
  SQLite and PostgreSQL alike, before Optuna is asked for a trial.
- A trial is handed out once: its lease row is unique by trial id.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update

from service.domain import jobs
from service.domain.reports import reap_expired
from service.protocol import Lease, ModelRef
from service.states import (
    OPEN_STATUSES,
    JobKind,
    LeaseState,
    SanityState,
    StudyStatus,
)
from service.storage.optuna_adapter import derive_seed
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, utcnow

log = logging.getLogger(__name__)


def _lease(
    rt: Runtime,
    kind: JobKind,
    job_id: int,
    study: StudyRow,
    params: dict[str, Any],
    *,
    trial_id: int | None = None,
    number: int | None = None,
) -> Lease:
    """The wire payload of work handed out. The training seed is reproducible for a
    seeded study and distinct per trial."""
    spec = study.spec
    return Lease(
        kind=kind,
        job_id=job_id,
        trial_id=trial_id,
        number=number,
        study_id=study.id,
        study_name=study.name,
        params=params,
        dataset=spec["dataset_info"],
        model=ModelRef(family=spec["model"]["family"]),
        epochs=study.epochs,
        metric=study.metric,
        direction=study.direction,
        seed=derive_seed(spec.get("seed"), -1 if number is None else number),
        lease_seconds=rt.settings.lease_seconds,
        trial_time_limit_s=spec.get("trial_time_limit_s"),
        tensorboard=bool(spec.get("tensorboard", False)),
        max_model_params=rt.settings.max_model_params,
    )


def _reserve_slot(rt: Runtime, worker_id: str) -> tuple[int, StudyRow] | None:
    """Take one slot of the oldest open study with budget left; record a pending lease."""
    now = utcnow()
    with rt.sessions.begin() as s:
        candidates = s.scalars(
            select(StudyRow.id)
            .where(
                StudyRow.status.in_(OPEN_STATUSES),
                StudyRow.slots_used < StudyRow.n_trials,
                StudyRow.optuna_study_id.is_not(None),  # creation still under way
                StudyRow.sanity_state.in_((SanityState.PASSED, SanityState.SKIPPED)),
            )
            .order_by(StudyRow.id)
        ).all()
        for study_id in candidates:
            taken = cast(
                CursorResult[Any],
                s.execute(
                    update(StudyRow)
                    .where(
                        StudyRow.id == study_id,
                        StudyRow.status.in_(OPEN_STATUSES),
                        StudyRow.slots_used < StudyRow.n_trials,
                    )
                    .values(
                        slots_used=StudyRow.slots_used + 1,
                        status=StudyStatus.RUNNING,
                        started_at=func.coalesce(StudyRow.started_at, now),
                    )
                    .execution_options(synchronize_session=False)
                ),
            )
            if taken.rowcount != 1:
                continue  # another lease took the last slot first
            lease = LeaseRow(
                study_id=study_id,
                worker_id=worker_id,
                state=LeaseState.PENDING,
                epochs_run=0,
                deadline=now + timedelta(seconds=rt.settings.lease_seconds),
                created_at=now,
            )
            s.add(lease)
            s.flush()
            study = s.scalars(
                select(StudyRow)
                .where(StudyRow.id == study_id)
                .execution_options(populate_existing=True)
            ).one()
            return lease.id, study
    return None


def lease(rt: Runtime, worker_id: str) -> Lease | None:
    """Hand the worker a trial of the oldest open study with budget left, or None."""
    with rt.unit_of_work():
        reap_expired(rt)
        job = jobs.take(rt, worker_id)
        if job is not None:
            with rt.sessions() as s:
                study = s.get_one(StudyRow, job.study_id)
            return _lease(rt, JobKind(job.kind), job.id, study, job.params or {})
        reserved = _reserve_slot(rt, worker_id)
        if reserved is None:
            return None
        lease_id, study = reserved
        try:
            trial_id, number, params = rt.optuna.ask(study)
        except Exception:
            with rt.sessions.begin() as s:
                s.execute(
                    update(StudyRow)
                    .where(StudyRow.id == study.id)
                    .values(slots_used=StudyRow.slots_used - 1)
                )
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.id == lease_id)
                    .values(
                        state=LeaseState.LOST, reason="the sampler failed", finished_at=utcnow()
                    )
                )
            raise
        with rt.sessions.begin() as s:
            row = s.get_one(LeaseRow, lease_id)
            row.trial_id = trial_id
            row.trial_number = number
            row.params = params
            row.state = LeaseState.ACTIVE
            row.deadline = utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        log.info(
            "leased trial %s (#%s of %s) to %s",
            trial_id,
            number,
            study.name,
            worker_id,
            extra={"study": study.name, "trial": trial_id, "worker": worker_id},
        )
        return _lease(rt, JobKind.TRIAL, lease_id, study, params, trial_id=trial_id, number=number)
