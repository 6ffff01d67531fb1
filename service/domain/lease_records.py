"""A trial's lease as the protocol's calls find it and record its result: the lookup
(with what a call needs of its study), and a counted result written exactly once in the
caller's transaction (``service.domain.reports`` drives them).

Lock order (PostgreSQL): a transaction writes the rows of its trial, lease and worker
first and the study's row last, so none deadlocks, and the study's row, which every
lease and result of the study updates, is held for the fewest statements: from its
UPDATE to the commit."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, bindparam, func, select

from service.errors import Conflict, NotFound
from service.states import COUNTED_STATES, LIVE_STATES, FinalState, JobKind, LeaseState, StudyStatus
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, utcnow

log = logging.getLogger("service.domain.reports")


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
    .returning(_LEASES.c.created_at)
)
_COUNTED = (
    select(func.count())
    .select_from(_LEASES)
    .where(
        _LEASES.c.study_id == bindparam("study_id"),
        _LEASES.c.kind == JobKind.TRIAL,
        _LEASES.c.state.in_(COUNTED_STATES),
    )
)


_CHARGE_RAN = (
    _STUDIES.update()
    .where(_STUDIES.c.id == bindparam("study_id"))
    .values(epochs_charged=_STUDIES.c.epochs_charged + bindparam("delta"))
)
_LIVE_TRIALS = (
    select(_LEASES.c.id)
    .where(
        _LEASES.c.study_id == _STUDIES.c.id,
        _LEASES.c.kind == JobKind.TRIAL,
        _LEASES.c.state.in_(LIVE_STATES),
    )
    .exists()
)
_BUDGET_SPENT = select(_STUDIES.c.id).where(
    _STUDIES.c.id == bindparam("study_id"),
    _STUDIES.c.epoch_budget.is_not(None),
    _STUDIES.c.epochs_charged + _STUDIES.c.epochs > _STUDIES.c.epoch_budget,
    ~_LIVE_TRIALS,
)
"""The study has an epoch budget, no room in it for another trial, and none running."""


def look(conn: Connection, trial_id: int, worker_id: str) -> Held:
    found = conn.execute(_LOOK_TRIAL, {"trial_id": trial_id}).first()
    if found is None:
        raise NotFound(f"trial {trial_id} was never leased")
    held = Held._make(found)
    if held.worker_id != worker_id:
        raise Conflict(
            f"trial {trial_id} is leased to worker {held.worker_id!r}, not {worker_id!r}"
        )
    return held


def gone(row: LeaseRow | Held | Outcome) -> Conflict:
    return Conflict(
        f"trial {row.trial_id} is no longer running: its lease is {row.state}"
        + (f" ({row.reason})" if row.reason else "")
    )


class Outcome(NamedTuple):
    """How a trial's lease ended, as a protocol call answers it."""

    trial_id: int | None
    state: str
    value: float | None
    reason: str | None


def end_lease(
    conn: Connection,
    lease_id: int,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    epochs_run: int,
    now: datetime,
) -> datetime | None:
    r"""End a live lease with a counted result, in the caller's transaction, exactly once:
    the UPDATE is conditional, so a racing reaper or retry changes nothing. Returns when
    the lease started, or None when it was not live any more (nothing written). The
    caller ``count``\ s it, last."""
    started: datetime | None = conn.execute(
        _RESULT,
        {
            "lease_id": lease_id,
            "new_state": state,
            "new_value": value,
            "new_reason": reason,
            "new_epochs_run": epochs_run,
            "new_finished_at": now,
        },
    ).scalar()
    return started


def count(conn: Connection, study: StudyRow, epochs_run: int, now: datetime) -> None:
    """Count a result ``end_lease`` wrote, as the last writes of the caller's transaction:
    charge the epochs it ran, and complete the study when its ``n_trials`` results are
    in, or when its epoch budget has no room for another trial and none runs.

    The charge's UPDATE locks the study's row until the commit (PostgreSQL; SQLite has
    the process lock), so the count after it sees every result committed before: two
    processes recording the last two results never each miss the other's."""
    # The lease was charged the study's epochs; the result is charged what it ran.
    delta = min(epochs_run, study.epochs) - study.epochs
    conn.execute(_CHARGE_RAN, {"study_id": study.id, "delta": delta})
    counted = conn.scalar(_COUNTED, {"study_id": study.id})
    if (counted or 0) < study.n_trials and (
        study.epoch_budget is None or not conn.scalar(_BUDGET_SPENT, {"study_id": study.id})
    ):
        return
    # Done: retrain the best configuration, if any trial completed.
    of_study = (_LEASES.c.study_id == study.id, _LEASES.c.kind == JobKind.TRIAL)
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


def recorded(
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


def record(
    rt: Runtime,
    lease_id: int,
    study: StudyRow,
    state: str,
    *,
    value: float | None,
    reason: str | None,
    epochs_run: int,
) -> bool:
    """``end_lease`` and ``count`` in a transaction of their own (a result Optuna
    already holds, adopted); returns whether this call recorded it."""
    now = utcnow()
    with rt.write() as conn:
        started = end_lease(
            conn, lease_id, state, value=value, reason=reason, epochs_run=epochs_run, now=now
        )
        if started is not None:
            count(conn, study, epochs_run, now)
    if started is None:
        return False
    recorded(rt, lease_id, study, state, value=value, reason=reason, started=started, now=now)
    return True
