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

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, select, update

from service.domain import feeder, jobs, workers_seen
from service.domain.findings import judged
from service.domain.lease_records import (
    Outcome,
    count,
    end_lease,
    gone,
    look,
    record,
    recorded,
)
from service.errors import Invalid
from service.states import (
    LIVE_STATES,
    OPEN_STATUSES,
    Action,
    JobKind,
    LeaseState,
    StudyStatus,
)
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, update_row, utcnow

log = logging.getLogger(__name__)

_LEASES = cast(Table, LeaseRow.__table__)


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
        held = look(conn, trial_id, worker_id)
        study = rt.as_created(held.study_id, held.study_created)
        if epoch is not None:
            _within_budget("epoch", epoch, study)
        if held.state == LeaseState.PRUNED:
            return Action.PRUNE, study
        if held.state != LeaseState.ACTIVE:
            raise gone(held)
        renewed: dict[str, Any] = {
            "deadline": utcnow() + timedelta(seconds=rt.settings.lease_seconds)
        }
        if epoch is not None and epoch > held.epochs_run:
            renewed["epochs_run"] = epoch
        if metrics:  # (a report without them keeps the last ones)
            renewed["metrics"] = metrics
        conn.execute(
            update_row(cast(Table, LeaseRow.__table__), "lease_id", frozenset(renewed)),
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


def _within_budget(field: str, epoch: int, study: StudyRow) -> None:
    if epoch > study.epochs:
        raise Invalid(
            (field,), f"is past the study's last epoch: it trains {study.epochs} epochs", epoch
        )


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
        raise gone(row) from None
    if action != Action.CONTINUE:
        return action
    if not rt.optuna.judge(study, trial_id, epoch, value):
        return Action.CONTINUE
    _finish(rt, trial_id, worker_id, LeaseState.PRUNED, value=value, epochs_run=epoch)
    return Action.PRUNE


class _NotLive(Exception):
    """The lease was settled by another call (the reaper) inside our transaction: roll
    it back, Optuna's end with it."""


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
    findings: list[dict[str, Any]] | None = None,
    diagnostics_s: float | None = None,
) -> Outcome:
    """End an active lease with a counted result: Optuna's trial and the service's lease
    end in one transaction, so neither holds a result the other lacks."""
    with rt.engine.connect() as conn:
        held = look(conn, trial_id, worker_id)
    if held.state == state:  # a retry of a call that already succeeded
        return Outcome(held.trial_id, held.state, held.value, held.reason)
    if held.state != LeaseState.ACTIVE:
        raise gone(held)
    study = rt.as_created(held.study_id, held.study_created)
    _within_budget("epochs_run", epochs_run or 0, study)
    epochs = max(held.epochs_run, epochs_run or 0)
    attrs: dict[str, Any] = {"worker_id": worker_id, "epochs_run": epochs}
    if reason is not None:
        attrs["fail_reason"] = reason
    if train_val_gap is not None:
        attrs["train_val_gap"] = train_val_gap
    if diagnostics_s is not None:
        attrs["diagnostics_s"] = round(diagnostics_s, 4)
    if findings or diagnostics_s is not None:  # diagnosed: the dashboard shows even []
        findings = judged(rt, study, value, findings or [])
        attrs["findings"] = findings
    if history:
        with rt.unit_of_work():  # (Optuna changes no finished trial)
            rt.optuna.attach_history(trial_id, history)
    now = utcnow()
    try:
        with rt.write() as conn:  # (the study's row last: see ``lease_records``)
            end = rt.optuna.end_trial(conn, trial_id, state, value=value, attrs=attrs)
            if end is None:  # the reaper (here or elsewhere) ended the trial first
                raise _NotLive
            started = end_lease(
                conn, held.id, state, value=value, reason=reason, epochs_run=epochs, now=now
            )
            if started is None:
                raise _NotLive
            extra: dict[str, Any] = {"findings": findings} if findings else {}
            last = last_metrics(history)
            if last:  # the last epoch's, even if its report never arrived
                extra["metrics"] = last
            if extra:
                conn.execute(_LEASES.update().where(_LEASES.c.id == held.id), extra)
            remember = workers_seen.seen_in(rt, conn, worker_id, job_id=None)
            count(conn, study, epochs, now)
    except _NotLive:
        # The reaper settles (or settled) the lease from Optuna's record; this call is
        # answered as too late unless that record is this result.
        with rt.engine.connect() as conn:
            held = look(conn, trial_id, worker_id)
        if held.state != state:
            raise gone(held) from None
        return Outcome(held.trial_id, held.state, held.value, held.reason)
    remember()
    rt.optuna.ended(study, end)
    recorded(rt, held.id, study, state, value=value, reason=reason, started=started, now=now)
    return Outcome(trial_id, state, value, reason)


def last_metrics(history: dict[str, list[float]] | None) -> dict[str, float]:
    """Each metric's last epoch in a trial's history (the winner's tie-break reads
    ``val_loss`` there)."""
    return {name: float(values[-1]) for name, values in (history or {}).items() if values}


def complete(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    value: float,
    epochs_run: int,
    *,
    history: dict[str, list[float]] | None = None,
    train_val_gap: float | None = None,
    findings: list[dict[str, Any]] | None = None,
    diagnostics_s: float | None = None,
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
        findings=findings,
        diagnostics_s=diagnostics_s,
    )


def fail(
    rt: Runtime,
    trial_id: int,
    worker_id: str,
    reason: str,
    epochs_run: int,
    *,
    history: dict[str, list[float]] | None = None,
    findings: list[dict[str, Any]] | None = None,
    diagnostics_s: float | None = None,
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
        findings=findings,
        diagnostics_s=diagnostics_s,
    )


def _give_back(rt: Runtime, row_id: int, state: str, reason: str) -> None:
    """End a live lease without a result (lost, released): fail its Optuna trial, return
    the slot, and queue the same parameters again while the study is open.

    If Optuna already holds a result for the trial (the service stopped between telling
    Optuna and recording it), that result is recorded instead: nothing finished is lost.
    If Optuna holds an earlier give-back's failure, the lease ends as that one says.
    """
    with rt.sessions.begin() as s:
        row = s.get_one(LeaseRow, row_id)
        study = s.get_one(StudyRow, row.study_id)
        if row.state not in LIVE_STATES:
            return
        trial_id, params, worker, epochs = row.trial_id, row.params, row.worker_id, row.epochs_run
        fold, reevaluates = row.fold, row.reevaluates  # (a re-evaluation's re-run is one)
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
        if adopted is None:
            # Optuna's outcome decides: a give-back that got as far as Optuna and no
            # further (its process killed in between) ends the lease as Optuna says.
            state, reason = rt.optuna.given_back(study, trial_id) or (state, reason)
        if adopted is not None:
            got, value, why = adopted
            record(rt, row_id, study, got, value=value, reason=why, epochs_run=epochs)
            return
    rerun: tuple[int, int] | None = None
    if trial_id is not None and params is not None and study.status in OPEN_STATUSES:
        # The same parameters, next in line: a RUNNING trial of their own, recorded as a
        # suggestion (handed out first) in the transaction that gives the slot back.
        rerun = rt.optuna.rerun(study, trial_id)
    with rt.sessions.begin() as s:  # (the lease's row, then the study's)
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
                .values(
                    slots_used=StudyRow.slots_used - 1,
                    epochs_charged=StudyRow.epochs_charged - StudyRow.epochs,
                )
            )
            if rerun is not None and params is not None:
                again = feeder.suggestion(
                    study, *rerun, params, priority=feeder.RERUN, fold=fold, reevaluates=reevaluates
                )
                s.add(again)
    if changed.rowcount != 1:  # another process settled it first; its slot is back
        if rerun is not None:
            rt.optuna.discard(study, rerun[0], "a re-run not needed: settled elsewhere")
        return
    if rerun is not None:
        rt.fed_one()  # a lease waiting for a suggestion takes the re-run
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
            held = look(conn, trial_id, worker_id)
        if held.state == LeaseState.RELEASED:
            return Outcome(held.trial_id, held.state, held.value, held.reason)
        if held.state != LeaseState.ACTIVE:
            raise gone(held)
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
