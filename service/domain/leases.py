"""The trial protocol: lease, report, heartbeat, complete, fail, release, and the reaper.

Invariants:
- A study's ``slots_used`` (active leases + counted results) never exceeds ``n_trials``:
  a slot is taken by one conditional ``UPDATE ... WHERE slots_used < n_trials``, atomic on
  SQLite and PostgreSQL alike, before Optuna is asked for a trial.
- A trial is handed out once. A lease whose deadline passes (no report or heartbeat) is
  reaped: the trial fails in Optuna as ``lost``, its slot is given back, and its
  parameters are queued again, so the study still ends with exactly ``n_trials`` results.
- Every call is idempotent: a retried ``complete`` answers as the first did and counts once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from service.domain import jobs
from service.errors import Conflict, NotFound
from service.storage.optuna_adapter import derive_seed
from service.storage.runtime import Runtime
from service.storage.tables import COUNTED_STATES, LIVE_STATES, LeaseRow, StudyRow, utcnow

log = logging.getLogger(__name__)

OPEN_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class Grant:
    """Work handed to a worker: a trial, or a study's sanity run or final model."""

    kind: str
    job_id: int
    trial_id: int | None
    number: int | None
    study: StudyRow
    params: dict[str, Any]
    lease_seconds: float

    @property
    def seed(self) -> int:
        """The training seed: reproducible for a seeded study, distinct per trial."""
        return derive_seed(self.study.spec.get("seed"), -1 if self.number is None else self.number)


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
                StudyRow.sanity_state.in_(("passed", "skipped")),
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
                        status="running",
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
                state="pending",
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


def lease(rt: Runtime, worker_id: str) -> Grant | None:
    """Hand the worker a trial of the oldest open study with budget left, or None."""
    with rt.unit_of_work():
        reap_expired(rt)
        job = jobs.take(rt, worker_id)
        if job is not None:
            with rt.sessions() as s:
                study = s.get_one(StudyRow, job.study_id)
            return Grant(
                job.kind, job.id, None, None, study, job.params or {}, rt.settings.lease_seconds
            )
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
                    .values(state="lost", reason="the sampler failed", finished_at=utcnow())
                )
            raise
        with rt.sessions.begin() as s:
            row = s.get_one(LeaseRow, lease_id)
            row.trial_id = trial_id
            row.trial_number = number
            row.params = params
            row.state = "active"
            row.deadline = utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        log.info(
            "leased trial %s (#%s of %s) to %s",
            trial_id,
            number,
            study.name,
            worker_id,
            extra={"study": study.name, "trial": trial_id, "worker": worker_id},
        )
        return Grant("trial", lease_id, trial_id, number, study, params, rt.settings.lease_seconds)


def _load(s: Session, trial_id: int, worker_id: str) -> tuple[LeaseRow, StudyRow]:
    row = s.scalars(
        select(LeaseRow).where(LeaseRow.trial_id == trial_id, LeaseRow.kind == "trial")
    ).one_or_none()
    if row is None:
        raise NotFound(f"trial {trial_id} was never leased")
    if row.worker_id != worker_id:
        raise Conflict(f"trial {trial_id} is leased to worker {row.worker_id!r}, not {worker_id!r}")
    return row, s.get_one(StudyRow, row.study_id)


def _gone(row: LeaseRow) -> Conflict:
    return Conflict(
        f"trial {row.trial_id} is no longer running: its lease is {row.state}"
        + (f" ({row.reason})" if row.reason else "")
    )


def _renew(
    rt: Runtime, trial_id: int, worker_id: str, epoch: int | None = None
) -> tuple[str, StudyRow]:
    """Extend the lease; returns the worker's action (without asking the pruner)."""
    with rt.sessions.begin() as s:
        row, study = _load(s, trial_id, worker_id)
        if row.state == "pruned":
            return "prune", study
        if row.state != "active":
            raise _gone(row)
        row.deadline = utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        if epoch is not None:
            row.epochs_run = max(row.epochs_run, epoch)
        return ("stop" if study.status == "stopped" else "continue"), study


def heartbeat(rt: Runtime, trial_id: int, worker_id: str) -> str:
    """Renew the lease between reports; answers continue, prune or stop."""
    with rt.unit_of_work():
        return _renew(rt, trial_id, worker_id)[0]


def report(rt: Runtime, trial_id: int, worker_id: str, epoch: int, value: float) -> str:
    """Record one epoch's objective value and ask the pruner.

    Returns ``continue``, ``prune`` (the trial is already ended PRUNED; stop training) or
    ``stop`` (the study was stopped; release the trial).
    """
    with rt.unit_of_work():
        action, study = _renew(rt, trial_id, worker_id, epoch)
        if action != "continue":
            return action
        prune = rt.optuna.report(study, trial_id, epoch, value)
        if prune is None:
            # Optuna has already ended the trial, but the service never recorded how (it
            # stopped in between): settle the lease from Optuna's record.
            row = _settle(rt, trial_id, "lost", "ended in Optuna but not in the service")
            if row.state == "pruned":
                return "prune"
            raise _gone(row)
        if not prune:
            return "continue"
        _finish(rt, trial_id, worker_id, "pruned", value=value, epochs_run=epoch)
        return "prune"


def _record(
    rt: Runtime,
    row_id: int,
    study: StudyRow,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    epochs_run: int,
) -> bool:
    """Record a counted result (complete, pruned, fail) on a live lease, exactly once: the
    UPDATE is conditional, so a racing reaper or retry changes nothing. Completes the study
    when its ``n_trials`` results are in. Returns whether this call recorded it."""
    now = utcnow()
    with rt.sessions.begin() as s:
        # Lock the study row first: two processes recording the last two results must not
        # each count the other's as missing (PostgreSQL; SQLite has the process lock).
        s.execute(select(StudyRow.id).where(StudyRow.id == study.id).with_for_update())
        changed = cast(
            CursorResult[Any],
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.id == row_id, LeaseRow.state.in_(LIVE_STATES))
                .values(
                    state=state, value=value, reason=reason, epochs_run=epochs_run, finished_at=now
                )
            ),
        )
        if changed.rowcount != 1:
            return False
        started = s.scalar(select(LeaseRow.created_at).where(LeaseRow.id == row_id))
        counted = (
            s.scalar(
                select(func.count())
                .select_from(LeaseRow)
                .where(
                    LeaseRow.study_id == study.id,
                    LeaseRow.kind == "trial",
                    LeaseRow.state.in_(COUNTED_STATES),
                )
            )
            or 0
        )
        if counted >= study.n_trials:
            # Done: retrain the best configuration, if any trial completed.
            any_complete = (
                s.scalar(
                    select(func.count())
                    .select_from(LeaseRow)
                    .where(
                        LeaseRow.study_id == study.id,
                        LeaseRow.kind == "trial",
                        LeaseRow.state == "complete",
                    )
                )
                or 0
            )
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study.id, StudyRow.status == "running")
                .values(
                    status="completed",
                    finished_at=now,
                    final_state="pending" if any_complete else "none",
                )
            )
    if rt.metrics is not None and started is not None:
        rt.metrics.trial_duration.labels(state).observe((now - started).total_seconds())
    log.info(
        "trial lease %s of %s ended %s (value %s, reason %s)",
        row_id,
        study.name,
        state,
        value,
        reason,
        extra={"study": study.name, "job": row_id},
    )
    return True


def _finish(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    state: str,
    *,
    value: float | None = None,
    reason: str | None = None,
    epochs_run: int | None = None,
    history: dict[str, list[float]] | None = None,
    train_val_gap: float | None = None,
) -> LeaseRow:
    """End an active lease with a counted result. Optuna is told first: if the service dies
    in between, the retried call (or the reaper) finds Optuna's trial finished and records
    that result once."""
    with rt.sessions.begin() as s:
        row, study = _load(s, trial_id, worker_id)
        if row.state == state:
            return row  # a retry of a call that already succeeded
        if row.state != "active":
            raise _gone(row)
        epochs = max(row.epochs_run, epochs_run or 0)
    attrs: dict[str, Any] = {"worker_id": worker_id, "epochs_run": epochs}
    if reason is not None:
        attrs["fail_reason"] = reason
    if train_val_gap is not None:
        attrs["train_val_gap"] = train_val_gap
    if history:
        rt.optuna.attach_history(trial_id, history)
    if rt.optuna.finish(study, trial_id, state, value=value, attrs=attrs):
        _record(rt, row.id, study, state, value=value, reason=reason, epochs_run=epochs)
    # else: the reaper (in this or another process) ended the trial first; it settles the
    # lease from Optuna's record, and this call is answered as too late.
    with rt.sessions.begin() as s:
        row = s.get_one(LeaseRow, row.id)
    if row.state != state:
        raise _gone(row)
    return row


def complete(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    value: float,
    epochs_run: int,
    *,
    history: dict[str, list[float]] | None = None,
    train_val_gap: float | None = None,
) -> LeaseRow:
    """Record the trial's objective value; a retry answers the same and counts once."""
    with rt.unit_of_work():
        return _finish(
            rt,
            trial_id,
            worker_id,
            "complete",
            value=value,
            epochs_run=epochs_run,
            history=history,
            train_val_gap=train_val_gap,
        )


def fail(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    reason: str,
    epochs_run: int,
    *,
    history: dict[str, list[float]] | None = None,
) -> LeaseRow:
    """Record that the trial failed (a non-finite loss, an exception); it counts as a result."""
    with rt.unit_of_work():
        return _finish(
            rt, trial_id, worker_id, "fail", reason=reason, epochs_run=epochs_run, history=history
        )


def _give_back(rt: Runtime, row_id: int, state: str, reason: str) -> None:
    """End a live lease without a result (lost, released): fail its Optuna trial, return
    the slot, and queue the same parameters again while the study is open.

    If Optuna already holds a result for the trial (the service stopped between telling
    Optuna and recording it), that result is recorded instead: nothing finished is lost.
    """
    with rt.sessions.begin() as s:
        row = s.get_one(LeaseRow, row_id)
        study = s.get_one(StudyRow, row.study_id)
        if row.state not in LIVE_STATES:
            return
        trial_id, params, worker, epochs = row.trial_id, row.params, row.worker_id, row.epochs_run
    if row.kind != "trial":
        jobs.give_back(rt, row, state, reason)
        return
    if trial_id is not None:
        adopted = rt.optuna.result(trial_id)
        if adopted is None and not rt.optuna.finish(
            study,
            trial_id,
            "fail",
            attrs={"worker_id": worker, "fail_reason": reason, "hpo_outcome": state},
        ):
            adopted = rt.optuna.result(trial_id)  # a result landed just before us
        if adopted is not None:
            got, value, why = adopted
            _record(rt, row_id, study, got, value=value, reason=why, epochs_run=epochs)
            return
    with rt.sessions.begin() as s:
        changed = cast(
            CursorResult[Any],
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.id == row_id, LeaseRow.state.in_(LIVE_STATES))
                .values(state=state, reason=reason, finished_at=utcnow())
            ),
        )
        if changed.rowcount != 1:
            return  # another process settled it first; its slot is already back
        s.execute(
            update(StudyRow)
            .where(StudyRow.id == study.id)
            .values(slots_used=StudyRow.slots_used - 1)
        )
    if trial_id is not None and params is not None and study.status in OPEN_STATUSES:
        rt.optuna.enqueue(study, params, replaces=trial_id)
    log.warning(
        "trial %s of %s %s: %s",
        trial_id,
        study.name,
        state,
        reason,
        extra={"study": study.name, "trial": trial_id},
    )


def _settle(rt: Runtime, trial_id: int, state: str, reason: str) -> LeaseRow:
    with rt.sessions.begin() as s:
        row_id = s.scalars(select(LeaseRow.id).where(LeaseRow.trial_id == trial_id)).one()
    _give_back(rt, row_id, state, reason)
    with rt.sessions.begin() as s:
        return s.get_one(LeaseRow, row_id)


def release(rt: Runtime, trial_id: int, worker_id: str, reason: str) -> LeaseRow:
    """The worker gives the trial back unfinished (it is stopping, or the study was
    stopped); the same parameters run again elsewhere."""
    with rt.unit_of_work():
        with rt.sessions.begin() as s:
            row, _study = _load(s, trial_id, worker_id)
            if row.state == "released":
                return row
            if row.state != "active":
                raise _gone(row)
        return _settle(rt, trial_id, "released", f"released by the worker: {reason}")


def reap_expired(rt: Runtime) -> int:
    """Mark every lease past its deadline as lost; returns how many."""
    with rt.unit_of_work():
        with rt.sessions.begin() as s:
            expired = s.execute(
                select(LeaseRow.id, LeaseRow.deadline).where(
                    LeaseRow.state.in_(LIVE_STATES), LeaseRow.deadline < utcnow()
                )
            ).all()
        for row_id, deadline in expired:
            _give_back(
                rt,
                row_id,
                "lost",
                f"lost: no report or heartbeat since {deadline.isoformat()} "
                f"(lease of {rt.settings.lease_seconds:g}s)",
            )
        return len(expired)
