"""Which workers are alive: every protocol call says a worker was seen, and what it holds.

A worker id is recorded when it is given work, never by a poll that found none: holding
the worker token does not let anyone fill ``/workers`` (and ``hpo_live_workers``, and the
feeder's buffer sizing) with ids that never worked. A recorded worker keeps its row while
it calls; a row not seen for :data:`FORGET_AFTER_LEASES` lease lengths is deleted by the
reaper (``forget_stale``), so the table holds the workers of about the last hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.exc import IntegrityError

from service.states import LIVE_STATES
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, WorkerRow, update_row, utcnow

log = logging.getLogger(__name__)
_KEEP: Any = object()
_WORKERS = cast(Table, WorkerRow.__table__)

FORGET_AFTER_LEASES = 20
"""A worker silent for this many lease lengths (20 minutes by default) is forgotten."""

SEEN_EVERY_S = 2.0
"""A worker's ``last_seen`` is written at most this often by one process (each epoch
report would otherwise write it), unless what it holds changed."""


def _merged(
    rt: Runtime, worker_id: str, host: str | None, pid: int | None, job_id: int | object | None
) -> tuple[Any, Any, Any]:
    """What the worker's row holds after a call that says this: what a call does not say
    stays as this process last wrote it."""
    last = rt.seen.get(worker_id)
    if last is None:
        return (host, pid, job_id)
    before = last[1]
    return (
        before[0] if host is None else host,
        before[1] if pid is None else pid,
        before[2] if job_id is _KEEP else job_id,
    )


def seen(
    rt: Runtime,
    worker_id: str,
    *,
    host: str | None = None,
    pid: int | None = None,
    job_id: int | object | None = _KEEP,
) -> None:
    """Record that ``worker_id`` called now (and, when given, the job it now holds).
    Best effort: bookkeeping never fails the call it accompanies (a lease already granted
    must reach its worker)."""
    now = time.monotonic()
    last = rt.seen.get(worker_id)
    what = _merged(rt, worker_id, host, pid, job_id)
    if last is not None and last[1] == what and now - last[0] < SEEN_EVERY_S:
        return  # written a moment ago (or by the call's own transaction: ``seen_in``)
    try:
        with rt.unit_of_work():
            recorded = _seen(rt, worker_id, host=host, pid=pid, job_id=job_id)
        if recorded:  # (an id that never worked is not remembered here either)
            rt.seen[worker_id] = (now, what)
    except Exception:
        log.warning("could not record worker %s as seen", worker_id, exc_info=True)


def seen_in(
    rt: Runtime,
    conn: Connection,
    worker_id: str,
    *,
    host: str | None = None,
    pid: int | None = None,
    job_id: int | object | None = _KEEP,
) -> Callable[[], None]:
    """``seen`` in the caller's write transaction (a lease's, a result's: one commit, not
    two). Returns what to call once that transaction commits, after which ``seen`` with
    the same arguments writes nothing; a worker without a row yet is left to ``seen``."""
    values = _values(worker_id, host, pid, job_id)
    changed = conn.execute(_update(values), values)
    if changed.rowcount != 1:
        return lambda: None
    what = _merged(rt, worker_id, host, pid, job_id)

    def remember() -> None:
        rt.seen[worker_id] = (time.monotonic(), what)

    return remember


def _values(
    worker_id: str, host: str | None, pid: int | None, job_id: int | object | None
) -> dict[str, Any]:
    values: dict[str, Any] = {"worker": worker_id, "new_last_seen": utcnow()}
    if host is not None:
        values["new_host"] = host
    if pid is not None:
        values["new_pid"] = pid
    if job_id is not _KEEP:
        values["new_current_job_id"] = job_id
    return values


def _update(values: dict[str, Any]) -> Any:
    """The UPDATE of the columns ``values`` sets (``new_<column>``)."""
    columns = frozenset(key.removeprefix("new_") for key in values if key.startswith("new_"))
    return update_row(_WORKERS, "worker", columns)


def _seen(
    rt: Runtime, worker_id: str, *, host: str | None, pid: int | None, job_id: int | object | None
) -> bool:
    """Whether the worker has a row now: updated, or inserted for a call about work it
    holds (a job given, a report, a heartbeat)."""
    values = _values(worker_id, host, pid, job_id)
    with rt.write() as conn:
        changed = conn.execute(_update(values), values)
    if changed.rowcount == 1:
        return True
    if job_id is None:  # a poll that found no work, or a result after the row expired
        return False
    now = values["new_last_seen"]
    try:
        with rt.sessions.begin() as s:
            s.add(
                WorkerRow(
                    id=worker_id,
                    first_seen=now,
                    host=host,
                    pid=pid,
                    current_job_id=None if job_id is _KEEP else job_id,
                    last_seen=now,
                )
            )
    except IntegrityError:  # another API process recorded it first
        return _seen(rt, worker_id, host=host, pid=pid, job_id=job_id)
    return True


def forget_stale(rt: Runtime) -> int:
    """Delete the workers not seen for ``FORGET_AFTER_LEASES`` lease lengths; how many."""
    since = utcnow() - timedelta(seconds=FORGET_AFTER_LEASES * rt.settings.lease_seconds)
    with rt.write() as conn:
        gone = conn.execute(
            _WORKERS.delete().where(_WORKERS.c.last_seen < since).returning(_WORKERS.c.id)
        )
        ids = gone.scalars().all()
    for worker_id in ids:
        rt.seen.pop(worker_id, None)
    return len(ids)


def _live_since(rt: Runtime) -> datetime:
    """A worker seen after this is live: within two lease lengths."""
    return utcnow() - timedelta(seconds=2 * rt.settings.lease_seconds)


def count_live(rt: Runtime) -> int:
    with rt.sessions() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(WorkerRow)
                .where(WorkerRow.last_seen >= _live_since(rt))
            )
            or 0
        )


def live(rt: Runtime) -> list[dict[str, Any]]:
    """Workers seen within two lease lengths, with the trial or job they hold."""
    since = _live_since(rt)
    with rt.sessions() as s:
        rows = s.execute(
            select(WorkerRow, LeaseRow)
            .outerjoin(
                LeaseRow,
                (LeaseRow.id == WorkerRow.current_job_id) & LeaseRow.state.in_(LIVE_STATES),
            )
            .where(WorkerRow.last_seen >= since)
            .order_by(WorkerRow.first_seen)
        ).all()
    return [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "last_seen": w.last_seen,
            "current": None
            if lease is None
            else {
                "kind": lease.kind,
                "job_id": lease.id,
                "trial_id": lease.trial_id,
                "study_id": lease.study_id,
            },
        }
        for w, lease in rows
    ]
