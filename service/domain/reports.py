"""What a worker says of a leased trial (report, heartbeat, complete, fail, release), and
the reaper of leases past their deadline.

Invariants:
- A lease whose deadline passes (no report or heartbeat) is reaped: the trial fails in
  Optuna as ``lost``, its slot is given back, and its parameters are queued again, so the
  study still ends with exactly ``n_trials`` results.
- Every call is idempotent: a retried ``complete`` answers as the first did and counts once.
- Optuna is told a result before the service records it; a result Optuna holds and the
  service does not is adopted (by the retried call or the reaper), never lost.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from service.domain import feeder, jobs
from service.errors import Conflict, NotFound
from service.states import (
    COUNTED_STATES,
    LIVE_STATES,
    OPEN_STATUSES,
    Action,
    FinalState,
    JobKind,
    LeaseState,
    StudyStatus,
)
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, utcnow

log = logging.getLogger(__name__)


def _load(s: Session, trial_id: int, worker_id: str) -> tuple[LeaseRow, StudyRow]:
    row = s.scalars(
        select(LeaseRow).where(LeaseRow.trial_id == trial_id, LeaseRow.kind == JobKind.TRIAL)
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
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    epoch: int | None = None,
    metrics: dict[str, float] | None = None,
    value: float | None = None,
) -> tuple[Action, StudyRow]:
    """Extend the lease, and with ``value`` store the epoch's value in Optuna, in one
    transaction; returns the worker's action (without asking the pruner)."""
    with rt.sessions.begin() as s:
        row, study = _load(s, trial_id, worker_id)
        if row.state == LeaseState.PRUNED:
            return Action.PRUNE, study
        if row.state != LeaseState.ACTIVE:
            raise _gone(row)
        row.deadline = utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        if epoch is not None:
            row.epochs_run = max(row.epochs_run, epoch)
        if metrics:  # (a report without them keeps the last ones)
            row.metrics = metrics
        if study.status == StudyStatus.STOPPED:
            return Action.STOP, study
        written = value is None or epoch is None or rt.optuna.write_step(s, trial_id, epoch, value)
        if not written:
            raise _EndedInOptuna
        return Action.CONTINUE, study


class _EndedInOptuna(Exception):
    """Optuna has already ended the trial; the service never recorded how."""


def heartbeat(rt: Runtime, trial_id: int, worker_id: str) -> Action:
    """Renew the lease between reports; answers continue, prune or stop."""
    with rt.unit_of_work():
        return _renew(rt, trial_id, worker_id)[0]


def report(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    epoch: int,
    value: float,
    metrics: dict[str, float] | None = None,
) -> Action:
    """Record one epoch's objective value (and its other metrics) and ask the pruner.

    Returns ``continue``, ``prune`` (the trial is already ended PRUNED; stop training) or
    ``stop`` (the study was stopped; release the trial).
    """
    with rt.unit_of_work():
        try:
            action, study = _renew(rt, trial_id, worker_id, epoch, metrics, value)
        except _EndedInOptuna:
            # Optuna has already ended the trial, but the service never recorded how (it
            # stopped in between): settle the lease from Optuna's record.
            row = _settle(rt, trial_id, LeaseState.LOST, "ended in Optuna but not in the service")
            if row.state == LeaseState.PRUNED:
                return Action.PRUNE
            raise _gone(row) from None
        if action != Action.CONTINUE:
            return action
        if not rt.optuna.judge(study, trial_id, epoch, value):
            return Action.CONTINUE
        _finish(rt, trial_id, worker_id, LeaseState.PRUNED, value=value, epochs_run=epoch)
        return Action.PRUNE


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
                    LeaseRow.kind == JobKind.TRIAL,
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
                        LeaseRow.kind == JobKind.TRIAL,
                        LeaseRow.state == LeaseState.COMPLETE,
                    )
                )
                or 0
            )
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study.id, StudyRow.status == StudyStatus.RUNNING)
                .values(
                    status=StudyStatus.COMPLETED,
                    finished_at=now,
                    final_state=FinalState.PENDING if any_complete else FinalState.NONE,
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
        if row.state != LeaseState.ACTIVE:
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
            LeaseState.COMPLETE,
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
            rt,
            trial_id,
            worker_id,
            LeaseState.FAIL,
            reason=reason,
            epochs_run=epochs_run,
            history=history,
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
    if row.kind != JobKind.TRIAL:
        jobs.give_back(rt, row, state, reason)
        return
    if trial_id is not None:
        adopted = rt.optuna.result(study, trial_id)
        if adopted is None and not rt.optuna.finish(
            study,
            trial_id,
            LeaseState.FAIL,
            attrs={"worker_id": worker, "fail_reason": reason, "hpo_outcome": state},
        ):
            adopted = rt.optuna.result(study, trial_id)  # a result landed just before us
        if adopted is not None:
            got, value, why = adopted
            _record(rt, row_id, study, got, value=value, reason=why, epochs_run=epochs)
            return
    rerun: tuple[int, int] | None = None
    if trial_id is not None and params is not None and study.status in OPEN_STATUSES:
        # The same parameters, next in line: a RUNNING trial of their own, recorded as a
        # suggestion (handed out first) in the transaction that gives the slot back.
        rerun = rt.optuna.rerun(study, trial_id)
    with rt.sessions.begin() as s:
        changed = cast(
            CursorResult[Any],
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.id == row_id, LeaseRow.state.in_(LIVE_STATES))
                .values(state=state, reason=reason, finished_at=utcnow())
            ),
        )
        if changed.rowcount == 1:
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study.id)
                .values(slots_used=StudyRow.slots_used - 1)
            )
            if rerun is not None and params is not None:
                s.add(feeder.suggestion(study, *rerun, params, priority=1))
    if changed.rowcount != 1:  # another process settled it first; its slot is back
        if rerun is not None:
            rt.optuna.discard(study, rerun[0], "a re-run not needed: settled elsewhere")
        return
    with rt.suggested:
        rt.suggested.notify_all()
    rt.wanted.set()  # the feeder tops up what the freed slot allows
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
            if row.state == LeaseState.RELEASED:
                return row
            if row.state != LeaseState.ACTIVE:
                raise _gone(row)
        return _settle(rt, trial_id, LeaseState.RELEASED, f"released by the worker: {reason}")


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
                LeaseState.LOST,
                f"lost: no report or heartbeat since {deadline.isoformat()} "
                f"(lease of {rt.settings.lease_seconds:g}s)",
            )
        return len(expired)
