"""Handing out work: ``lease`` gives a worker the next job, final model or sanity run
first, else a trial of the oldest open study with budget left, claimed from the
suggestions the feeder (``service.domain.feeder``) sampled ahead: no sampling on the
request path.

Invariants (``service.domain.reports`` and ``feeder`` keep the rest of them):
- A study's ``slots_used`` (active leases + counted results) never exceeds ``n_trials``:
  a slot is taken by one conditional ``UPDATE ... WHERE slots_used < n_trials``, atomic on
  SQLite and PostgreSQL alike, in the transaction that claims the suggestion.
- With an ``epoch_budget``, ``epochs_charged`` never exceeds it: the slot's UPDATE also
  charges the study's ``epochs`` only while they fit; a counted result is charged the
  epochs it ran instead, and a lost or released trial gives its charge back with its slot.
- A trial is handed out once: the claim deletes its suggestion, and its lease row is
  unique by trial id.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, or_, select

from service.domain import jobs, workers_seen
from service.protocol import Lease, ModelRef
from service.states import (
    OPEN_STATUSES,
    JobKind,
    LeaseState,
    SanityState,
    StudyStatus,
)
from service.storage.optuna_choices import derive_seed
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, SuggestionRow, utcnow

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
    fold: int = 0,
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
        fold=fold,
        lease_seconds=rt.settings.lease_seconds,
        trial_time_limit_s=spec.get("trial_time_limit_s"),
        tensorboard=bool(spec.get("tensorboard", False)),
        diagnostics=bool(spec.get("diagnostics", True)),
        max_model_params=rt.settings.max_model_params,
    )


_STUDIES = cast(Table, StudyRow.__table__)
_SUGGESTIONS = cast(Table, SuggestionRow.__table__)
_LEASES = cast(Table, LeaseRow.__table__)
EPOCHS_FIT = or_(
    _STUDIES.c.epoch_budget.is_(None),
    _STUDIES.c.epochs_charged + _STUDIES.c.epochs <= _STUDIES.c.epoch_budget,
)
"""Whether one more trial's epochs fit in the study's epoch budget (if it has one)."""
_CANDIDATES = (
    select(_STUDIES.c.id, _STUDIES.c.created_at)
    .where(
        _STUDIES.c.status.in_(OPEN_STATUSES),
        _STUDIES.c.slots_used < _STUDIES.c.n_trials,
        EPOCHS_FIT,
        _STUDIES.c.optuna_study_id.is_not(None),  # creation still under way
        _STUDIES.c.sanity_state.in_((SanityState.PASSED, SanityState.SKIPPED)),
    )
    .order_by(_STUDIES.c.id)
)


# The claim's statements, built once (building one cost about as much as running it).
_TAKE_SLOT = (
    _STUDIES.update()
    .where(
        _STUDIES.c.id == bindparam("study_id"),
        _STUDIES.c.status.in_(OPEN_STATUSES),
        _STUDIES.c.slots_used < _STUDIES.c.n_trials,
        EPOCHS_FIT,
    )
    .values(
        slots_used=_STUDIES.c.slots_used + 1,
        epochs_charged=_STUDIES.c.epochs_charged + _STUDIES.c.epochs,
        status=StudyStatus.RUNNING,
        started_at=func.coalesce(
            _STUDIES.c.started_at, bindparam("now", type_=_STUDIES.c.started_at.type)
        ),
    )
)
_NEXT_SUGGESTION = (
    select(
        _SUGGESTIONS.c.id,
        _SUGGESTIONS.c.trial_id,
        _SUGGESTIONS.c.trial_number,
        _SUGGESTIONS.c.params,
        _SUGGESTIONS.c.fold,
        _SUGGESTIONS.c.reevaluates,
    )
    .where(_SUGGESTIONS.c.study_id == bindparam("study_id"))
    .order_by(_SUGGESTIONS.c.priority.desc(), _SUGGESTIONS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_TAKE_SUGGESTION = _SUGGESTIONS.delete().where(_SUGGESTIONS.c.id == bindparam("suggestion_id"))
_NEW_LEASE = _LEASES.insert().returning(_LEASES.c.id)


class _SlotGone(Exception):
    """The study's last slot went to another lease since the candidates were read (or
    the study closed): roll back this claim of it, and try the other studies."""

    def __init__(self, study_id: int) -> None:
        self.study_id = study_id


def _claim(
    rt: Runtime, worker_id: str, host: str | None, pid: int | None
) -> tuple[Lease | None, bool]:
    """Claim a suggestion of the oldest open study with budget left, in one transaction:
    take the suggestion (deleted: handed out once), write the active lease, then take a
    slot (conditional UPDATE). Returns (the lease or None, whether some study has budget
    left).

    The slot comes last on purpose. Its UPDATE locks the study's row until the commit,
    and every lease and every result of the study takes that lock (PostgreSQL): taken
    first, it was held across the claim's other statements, and under 32 workers most of
    a lease's time was the wait for it. Every transaction of the service takes the study's
    row after the rows of the trial, lease and worker it writes, so none deadlock."""
    now = utcnow()
    passed: set[int] = set()
    while True:
        claimed = None
        try:
            with rt.write() as conn:
                candidates = [c for c in conn.execute(_CANDIDATES).all() if c[0] not in passed]
                for study_id, created_at in candidates:
                    claimed = _claim_in(rt, conn, study_id, worker_id, now)
                    if claimed is not None:
                        study = (study_id, created_at)
                        remember = workers_seen.seen_in(
                            rt, conn, worker_id, host=host, pid=pid, job_id=claimed[0]
                        )
                        taken = conn.execute(_TAKE_SLOT, {"study_id": study_id, "now": now})
                        if taken.rowcount != 1:
                            raise _SlotGone(study_id)
                        break
        except _SlotGone as gone:  # (rolled back: the suggestion is there for the next)
            passed.add(gone.study_id)
            continue
        break
    if claimed is None:
        return None, bool(candidates)
    remember()
    lease_id, suggestion = claimed
    work = _lease(  # (after the commit: the write lock is held for the writes alone)
        rt,
        JobKind.TRIAL,
        lease_id,
        rt.as_created(*study),
        suggestion.params,
        trial_id=suggestion.trial_id,
        number=suggestion.trial_number,
        fold=suggestion.fold,
    )
    return work, True


def _claim_in(
    rt: Runtime, conn: Connection, study_id: int, worker_id: str, now: datetime
) -> tuple[int, Any] | None:
    """In the caller's transaction: one suggestion of the study, taken, and the lease
    row; (lease id, the suggestion), or None (no suggestion ready: nothing written). The
    caller takes the slot."""
    suggestion = conn.execute(_NEXT_SUGGESTION, {"study_id": study_id}).first()
    if suggestion is None:
        return None
    conn.execute(_TAKE_SUGGESTION, {"suggestion_id": suggestion.id})
    lease_id = conn.execute(
        _NEW_LEASE,
        {
            "study_id": study_id,
            "kind": JobKind.TRIAL,
            "worker_id": worker_id,
            "state": LeaseState.ACTIVE,
            "trial_id": suggestion.trial_id,
            "trial_number": suggestion.trial_number,
            "params": suggestion.params,
            "fold": suggestion.fold,
            "reevaluates": suggestion.reevaluates,
            "epochs_run": 0,
            "deadline": now + timedelta(seconds=rt.settings.lease_seconds),
            "created_at": now,
        },
    ).scalar_one()
    return lease_id, suggestion


def lease(
    rt: Runtime, worker_id: str, *, host: str | None = None, pid: int | None = None
) -> Lease | None:
    """Hand the worker a job (final model, sanity run) or a suggested trial of the oldest
    open study with budget left. When a study has budget but no suggestion ready (the
    feeder is sampling it), wait for one up to ``lease_wait_s``; None when there is none.
    """
    deadline = time.monotonic() + rt.settings.lease_wait_s
    while True:
        # (Expired leases are reaped every ``reap_interval_s`` by the API's reaper.)
        job = jobs.take(rt, worker_id)
        if job is not None:
            with rt.sessions() as s:
                study = s.get_one(StudyRow, job.study_id)
            return _lease(rt, JobKind(job.kind), job.id, study, job.params or {})
        with rt.suggested:
            fed = rt.fed  # (a suggestion committed after this wakes the wait below)
        work, budget_left = _claim(rt, worker_id, host, pid)
        rt.wanted.set()  # the feeder tops up what was taken, or samples what is missing
        if work is not None:
            log.info(
                "leased trial %s (#%s of %s) to %s",
                work.trial_id,
                work.number,
                work.study_name,
                worker_id,
                extra={"study": work.study_name, "trial": work.trial_id, "worker": worker_id},
            )
            return work
        left = deadline - time.monotonic()
        if not budget_left or left <= 0:
            return None
        # Wait for a suggestion without polling: each one this process's sampler commits
        # (or a re-run this process queues) wakes one waiting lease, which claims again.
        # Every ``lease_look_s`` the lease also looks with one cheap query, outside the write
        # lock: for a suggestion another API process's sampler made (PostgreSQL), or one
        # whose wake-up went to a lease that had already been served.
        while time.monotonic() < deadline:
            with rt.suggested:
                if rt.fed != fed:  # committed while the claim looked: claim again
                    break
                left = min(max(deadline - time.monotonic(), 0), rt.settings.lease_look_s)
                woken = rt.suggested.wait(left)
                fed = rt.fed  # (the look below sees what came before)
            if woken:
                break
            with rt.sessions() as s:
                if s.scalar(select(SuggestionRow.id).limit(1)) is not None:
                    break
