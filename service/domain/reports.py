"""What a worker says of a leased trial (report, heartbeat, complete, fail, release), and
the reaper of leases past their deadline.

Invariants:
- A lease whose deadline passes (no report or heartbeat) is reaped: the trial fails in
  Optuna as ``lost``, its slot is given back, and its parameters are queued again, so the
  study still ends with exactly ``n_trials`` results.
- Every call is idempotent: a retried ``complete`` answers as the first did and counts once.
- A result ends the Optuna trial and the lease in one transaction (``_finish``), so
  neither holds a result the other lacks; a result Optuna holds and the service does not
  (written by an older version, or by Optuna's own API) is adopted by the reaper, never
  lost.
- Each call's transactions are short and take the SQLite write lock for themselves
  (``Runtime.write``); what a call reads first and the pruner's thinking stay outside.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, CursorResult, Table, bindparam, func, select, update

from service.domain import feeder, jobs, workers_seen
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


_LEASES = cast(Table, LeaseRow.__table__)
_STUDIES = cast(Table, StudyRow.__table__)


class Held(NamedTuple):
    """A trial's lease as a protocol call finds it, with what it needs of its study."""

    id: int
    trial_id: int | None
    worker_id: str
    state: str
    value: float | None
    reason: str | None
    epochs_run: int
    study_id: int
    study_created: datetime
    study_status: str


_LOOK = select(
    _LEASES.c.id,
    _LEASES.c.trial_id,
    _LEASES.c.worker_id,
    _LEASES.c.state,
    _LEASES.c.value,
    _LEASES.c.reason,
    _LEASES.c.epochs_run,
    _LEASES.c.study_id,
    _STUDIES.c.created_at,
    _STUDIES.c.status,
).join(_STUDIES, _STUDIES.c.id == _LEASES.c.study_id)
_LOOK_TRIAL = _LOOK.where(
    _LEASES.c.trial_id == bindparam("trial_id"), _LEASES.c.kind == JobKind.TRIAL
)
# The hot path's statements, built once (building one cost about as much as running it).
_LOCK_STUDY = select(_STUDIES.c.id).where(_STUDIES.c.id == bindparam("study_id")).with_for_update()
_RESULT = (
    _LEASES.update()
    .where(_LEASES.c.id == bindparam("lease_id"), _LEASES.c.state.in_(LIVE_STATES))
    .values(
        state=bindparam("new_state"),
        value=bindparam("new_value"),
        reason=bindparam("new_reason"),
        epochs_run=bindparam("new_epochs_run"),
        finished_at=bindparam("new_finished_at", type_=_LEASES.c.finished_at.type),
    )
)
_STARTED = select(_LEASES.c.created_at).where(_LEASES.c.id == bindparam("lease_id"))
_COUNTED = (
    select(func.count())
    .select_from(_LEASES)
    .where(
        _LEASES.c.study_id == bindparam("study_id"),
        _LEASES.c.kind == JobKind.TRIAL,
        _LEASES.c.state.in_(COUNTED_STATES),
    )
)


@functools.cache
def _renewal(columns: frozenset[str]) -> Any:
    """The UPDATE that renews a lease (and sets what a report says), per set of columns."""
    return (
        _LEASES.update()
        .where(_LEASES.c.id == bindparam("lease_id"))
        .values({name: bindparam(f"new_{name}", type_=_LEASES.c[name].type) for name in columns})
    )


def _look(conn: Connection, trial_id: int, worker_id: str) -> Held:
    found = conn.execute(_LOOK_TRIAL, {"trial_id": trial_id}).first()
    if found is None:
        raise NotFound(f"trial {trial_id} was never leased")
    held = Held._make(found)
    if held.worker_id != worker_id:
        raise Conflict(
            f"trial {trial_id} is leased to worker {held.worker_id!r}, not {worker_id!r}"
        )
    return held


def _gone(row: LeaseRow | Held | Outcome) -> Conflict:
    return Conflict(
        f"trial {row.trial_id} is no longer running: its lease is {row.state}"
        + (f" ({row.reason})" if row.reason else "")
    )


def _lock_study(conn: Connection, study_id: int) -> None:
    """Lock the study's row (PostgreSQL): two processes recording the last two results
    must not each count the other's as missing (SQLite has the process lock). Every
    transaction that writes a study's leases takes it first, so they never deadlock."""
    conn.execute(_LOCK_STUDY, {"study_id": study_id})


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
    with rt.write() as conn:
        held = _look(conn, trial_id, worker_id)
        study = rt.as_created(held.study_id, held.study_created)
        if held.state == LeaseState.PRUNED:
            return Action.PRUNE, study
        if held.state != LeaseState.ACTIVE:
            raise _gone(held)
        renewed: dict[str, Any] = {
            "deadline": utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        }
        if epoch is not None and epoch > held.epochs_run:
            renewed["epochs_run"] = epoch
        if metrics:  # (a report without them keeps the last ones)
            renewed["metrics"] = metrics
        conn.execute(
            _renewal(frozenset(renewed)),
            {"lease_id": held.id, **{f"new_{k}": v for k, v in renewed.items()}},
        )
        if held.study_status == StudyStatus.STOPPED:
            return Action.STOP, study
        written = (
            value is None or epoch is None or rt.optuna.write_step(conn, trial_id, epoch, value)
        )
        if not written:
            raise _EndedInOptuna
        return Action.CONTINUE, study


class _EndedInOptuna(Exception):
    """Optuna has already ended the trial; the service never recorded how."""


def heartbeat(rt: Runtime, trial_id: int, worker_id: str) -> Action:
    """Renew the lease between reports; answers continue, prune or stop."""
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
    # (No lock around the whole call: each transaction takes the write lock for itself,
    # and the pruner thinks outside it.)
    try:
        action, study = _renew(rt, trial_id, worker_id, epoch, metrics, value)
    except _EndedInOptuna:
        # Optuna has already ended the trial, but the service never recorded how (it
        # stopped in between): settle the lease from Optuna's record.
        with rt.unit_of_work():
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


class Outcome(NamedTuple):
    """How a trial's lease ended, as a protocol call answers it."""

    trial_id: int | None
    state: str
    value: float | None
    reason: str | None


class _NotLive(Exception):
    """The lease was settled by another call (the reaper) inside our transaction: roll
    it back, Optuna's end with it."""


def _count_result(
    conn: Connection,
    lease_id: int,
    study: StudyRow,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    epochs_run: int,
    now: datetime,
) -> datetime | None:
    """Record a counted result (complete, pruned, fail) on a live lease, in the caller's
    transaction (which holds the study's lock), exactly once: the UPDATE is conditional,
    so a racing reaper or retry changes nothing. Completes the study when its
    ``n_trials`` results are in. Returns when the lease started, or None when it was not
    live any more (nothing written)."""
    changed = conn.execute(
        _RESULT,
        {
            "lease_id": lease_id,
            "new_state": state,
            "new_value": value,
            "new_reason": reason,
            "new_epochs_run": epochs_run,
            "new_finished_at": now,
        },
    )
    if changed.rowcount != 1:
        return None
    started: datetime | None = conn.scalar(_STARTED, {"lease_id": lease_id})
    of_study = (_LEASES.c.study_id == study.id, _LEASES.c.kind == JobKind.TRIAL)
    counted = conn.scalar(_COUNTED, {"study_id": study.id})
    if (counted or 0) >= study.n_trials:
        # Done: retrain the best configuration, if any trial completed.
        any_complete = conn.scalar(
            select(func.count())
            .select_from(_LEASES)
            .where(*of_study, _LEASES.c.state == LeaseState.COMPLETE)
        )
        conn.execute(
            _STUDIES.update()
            .where(_STUDIES.c.id == study.id, _STUDIES.c.status == StudyStatus.RUNNING)
            .values(
                status=StudyStatus.COMPLETED,
                finished_at=now,
                final_state=FinalState.PENDING if any_complete else FinalState.NONE,
            )
        )
    return started or now


def _recorded(
    rt: Runtime,
    lease_id: int,
    study: StudyRow,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    started: datetime,
    now: datetime,
) -> None:
    if rt.metrics is not None:
        rt.metrics.trial_duration.labels(state).observe((now - started).total_seconds())
    log.info(
        "trial lease %s of %s ended %s (value %s, reason %s)",
        lease_id,
        study.name,
        state,
        value,
        reason,
        extra={"study": study.name, "job": lease_id},
    )


def _record(
    rt: Runtime,
    lease_id: int,
    study: StudyRow,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    epochs_run: int,
) -> bool:
    """``_count_result`` in a transaction of its own (a result Optuna already holds,
    adopted); returns whether this call recorded it."""
    now = utcnow()
    with rt.write() as conn:
        _lock_study(conn, study.id)
        started = _count_result(
            conn, lease_id, study, state, value=value, reason=reason, epochs_run=epochs_run, now=now
        )
    if started is None:
        return False
    _recorded(rt, lease_id, study, state, value=value, reason=reason, started=started, now=now)
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
) -> Outcome:
    """End an active lease with a counted result: Optuna's trial and the service's lease
    end in one transaction, so neither holds a result the other lacks."""
    with rt.engine.connect() as conn:
        held = _look(conn, trial_id, worker_id)
    if held.state == state:  # a retry of a call that already succeeded
        return Outcome(held.trial_id, held.state, held.value, held.reason)
    if held.state != LeaseState.ACTIVE:
        raise _gone(held)
    study = rt.as_created(held.study_id, held.study_created)
    epochs = max(held.epochs_run, epochs_run or 0)
    attrs: dict[str, Any] = {"worker_id": worker_id, "epochs_run": epochs}
    if reason is not None:
        attrs["fail_reason"] = reason
    if train_val_gap is not None:
        attrs["train_val_gap"] = train_val_gap
    if history:
        with rt.unit_of_work():  # (Optuna changes no finished trial)
            rt.optuna.attach_history(trial_id, history)
    now = utcnow()
    try:
        with rt.write() as conn:
            _lock_study(conn, study.id)
            end = rt.optuna.end_trial(conn, trial_id, state, value=value, attrs=attrs)
            if end is None:  # the reaper (here or elsewhere) ended the trial first
                raise _NotLive
            started = _count_result(
                conn, held.id, study, state, value=value, reason=reason, epochs_run=epochs, now=now
            )
            if started is None:
                raise _NotLive
            remember = workers_seen.seen_in(rt, conn, worker_id, job_id=None)
    except _NotLive:
        # The reaper settles (or settled) the lease from Optuna's record; this call is
        # answered as too late unless that record is this result.
        with rt.engine.connect() as conn:
            held = _look(conn, trial_id, worker_id)
        if held.state != state:
            raise _gone(held) from None
        return Outcome(held.trial_id, held.state, held.value, held.reason)
    remember()
    rt.optuna.ended(study, end)
    _recorded(rt, held.id, study, state, value=value, reason=reason, started=started, now=now)
    return Outcome(trial_id, state, value, reason)


def complete(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    value: float,
    epochs_run: int,
    *,
    history: dict[str, list[float]] | None = None,
    train_val_gap: float | None = None,
) -> Outcome:
    """Record the trial's objective value; a retry answers the same and counts once."""
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
) -> Outcome:
    """Record that the trial failed (a non-finite loss, an exception); it counts as a result."""
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
        _lock_study(s.connection(), study.id)
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


def _settle(rt: Runtime, trial_id: int, state: str, reason: str) -> Outcome:
    with rt.sessions.begin() as s:
        row_id = s.scalars(select(LeaseRow.id).where(LeaseRow.trial_id == trial_id)).one()
    _give_back(rt, row_id, state, reason)
    with rt.sessions.begin() as s:
        row = s.get_one(LeaseRow, row_id)
        return Outcome(row.trial_id, row.state, row.value, row.reason)


def release(rt: Runtime, trial_id: int, worker_id: str, reason: str) -> Outcome:
    """The worker gives the trial back unfinished (it is stopping, or the study was
    stopped); the same parameters run again elsewhere."""
    with rt.unit_of_work():
        with rt.engine.connect() as conn:
            held = _look(conn, trial_id, worker_id)
        if held.state == LeaseState.RELEASED:
            return Outcome(held.trial_id, held.state, held.value, held.reason)
        if held.state != LeaseState.ACTIVE:
            raise _gone(held)
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
