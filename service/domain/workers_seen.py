"""Which workers are alive: every protocol call says a worker was seen, and what it holds."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError

from service.states import LIVE_STATES
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, WorkerRow, utcnow

log = logging.getLogger(__name__)
_KEEP = object()

SEEN_EVERY_S = 2.0
"""A worker's ``last_seen`` is written at most this often by one process (each epoch
report would otherwise write it), unless what it holds changed."""


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
    what = (host, pid, job_id)
    if last is not None:  # what a call does not say stays as this process last wrote it
        before = last[1]
        what = (
            before[0] if host is None else host,
            before[1] if pid is None else pid,
            before[2] if job_id is _KEEP else job_id,
        )
    if last is not None and last[1] == what and now - last[0] < SEEN_EVERY_S:
        return  # written a moment ago: a report need not write it again
    try:
        with rt.unit_of_work():
            _seen(rt, worker_id, host=host, pid=pid, job_id=job_id)
        rt.seen[worker_id] = (now, what)
    except Exception:
        log.warning("could not record worker %s as seen", worker_id, exc_info=True)


def _seen(
    rt: Runtime, worker_id: str, *, host: str | None, pid: int | None, job_id: int | object | None
) -> None:
    now = utcnow()
    values: dict[str, Any] = {"last_seen": now}
    if host is not None:
        values["host"] = host
    if pid is not None:
        values["pid"] = pid
    if job_id is not _KEEP:
        values["current_job_id"] = job_id
    with rt.sessions.begin() as s:
        changed = cast(
            CursorResult[Any],
            s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(values)),
        )
    if changed.rowcount == 1:
        return
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
        _seen(rt, worker_id, host=host, pid=pid, job_id=job_id)


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
