"""Sampling off the request path: every API process runs a feeder thread that keeps each
open study a few suggestions ahead of the workers, so a lease only claims one.

Each tick (``feeder_interval_s``, or at once when a lease takes a suggestion) the feeder:
- refreshes this process's cache of every open study's trials (the pruners read it);
- claims the studies no live process samples (``hpo_samplers``: one owner per study,
  renewed while it lives; ``sampler_ttl_s`` after an owner dies another takes over);
- tops up the suggestions of the studies it owns to one per live worker plus
  ``suggestions_ahead`` (none ahead for a seeded study), never beyond the budget left;
- discards the suggestions of studies that are no longer open.

Invariants:
- A study's ``slots_used`` plus its suggestions never exceeds ``n_trials``: a suggestion
  is made only below it, a lease turns one suggestion into one slot, and a lost trial
  gives back its slot before its re-run is queued.
- A suggestion is a RUNNING Optuna trial, so the constant liar counts it, like the trials
  handed out, and parallel suggestions stay diverse.
- A suggestion is handed out once: the lease deletes it in the transaction that takes the
  slot (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the process lock).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.domain import winners, workers_seen
from service.states import LIVE_STATES, OPEN_STATUSES, JobKind, SanityState, StudyStatus
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, SamplerRow, StudyRow, SuggestionRow, utcnow

log = logging.getLogger(__name__)

REFRESH_S = 0.5
"""How stale a process's cache of a study's trials may get: results that other processes
(or this one) recorded reach the sampler and the pruners within this."""

_SUGGESTIONS = cast(Table, SuggestionRow.__table__)
MAX_FAILURES = 3
"""Sampling that fails this many times in a row fails the study, saying why (a worker
would otherwise wait for suggestions that never come)."""

QUEUED, RERUN = 1, 2
"""Suggestions' priorities: a lost trial's re-run first, then queued trials (enqueued,
the notes' priors, re-evaluations), then sampled ones (0)."""

STOPPED_REASON = "a suggestion never handed out: the study was stopped"


def _why_closed(status: str | None) -> str:
    return f"a suggestion never handed out: the study is {status}"


class _Closed(Exception):
    """The study was stopped (or ended) while this process sampled for it."""


def _status_now(conn: Connection | Session, study_id: int) -> str | None:
    return conn.execute(select(StudyRow.status).where(StudyRow.id == study_id)).scalar()


def feedable(study: StudyRow) -> bool:
    return (
        study.status in OPEN_STATUSES
        and study.optuna_study_id is not None
        and study.sanity_state in (SanityState.PASSED, SanityState.SKIPPED)
    )


def discard(rt: Runtime, study: StudyRow, reason: str = STOPPED_REASON) -> int:
    """Fail the suggestions of a study that no longer hands out trials (Optuna first,
    then the rows: a crash in between leaves rows the next tick discards again)."""
    with rt.sessions() as s:
        trial_ids = s.scalars(
            select(SuggestionRow.trial_id).where(SuggestionRow.study_id == study.id)
        ).all()
    if not trial_ids:
        return 0
    for trial_id in trial_ids:
        rt.optuna.discard(study, trial_id, reason)
    with rt.unit_of_work(), rt.sessions.begin() as s:
        s.execute(delete(SuggestionRow).where(SuggestionRow.trial_id.in_(trial_ids)))
    log.info("discarded %d suggestions of %s", len(trial_ids), study.name)
    return len(trial_ids)


def suggestion(
    study: StudyRow,
    trial_id: int,
    number: int,
    params: dict[str, Any],
    *,
    priority: int = 0,
    fold: int = 0,
    reevaluates: int | None = None,
) -> SuggestionRow:
    """A queued trial or a re-run, handed out before the sampler's; a re-evaluation
    (``winners``) with its ``fold`` and the number of the trial it ``reevaluates``."""
    return SuggestionRow(
        **_suggested(study, trial_id, number, params, priority),
        fold=fold,
        reevaluates=reevaluates,
    )


def _suggested(
    study: StudyRow, trial_id: int, number: int, params: dict[str, Any], priority: int
) -> dict[str, Any]:
    return {
        "study_id": study.id,
        "trial_id": trial_id,
        "trial_number": number,
        "params": params,
        "priority": priority,
        "created_at": utcnow(),
    }


def _live_trials(study_id: int) -> Any:
    return (
        select(func.count())
        .select_from(LeaseRow)
        .where(
            LeaseRow.study_id == study_id,
            LeaseRow.kind == JobKind.TRIAL,
            LeaseRow.state.in_(LIVE_STATES),
        )
        .scalar_subquery()
    )


class Feeder:
    """The feeder of one API process (see the module's docstring). With ``samples``
    False it only refreshes the process's cache of open studies' trials (the pruners read
    it): the API process's thread, beside the sampler process that samples."""

    def __init__(
        self, rt: Runtime, *, samples: bool = True, watch: Callable[[], None] | None = None
    ) -> None:
        self.rt = rt
        self.samples = samples
        self._watch = watch
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._owned: dict[int, float] = {}  # study id -> when our claim expires (monotonic)
        self._refreshed: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.rt.wanted.set()
        self._thread.join(timeout=30)
        self._release_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.samples:
                self.rt.wanted.wait(self.rt.settings.feeder_interval_s)
                self.rt.wanted.clear()
            else:
                self._stop.wait(REFRESH_S)
            try:
                self.tick()
            except Exception:  # keep feeding; the next tick retries
                log.exception("feeding suggestions failed")
                self._stop.wait(1.0)

    def tick(self) -> None:
        """One round: refresh, claim, top up, discard (public for tests)."""
        with self.rt.sessions() as s:
            studies = s.scalars(
                select(StudyRow).where(StudyRow.status.in_(OPEN_STATUSES)).order_by(StudyRow.id)
            ).all()
            closed = s.scalars(
                select(StudyRow).where(
                    StudyRow.id.in_(select(SuggestionRow.study_id).distinct()),
                    StudyRow.status.not_in(OPEN_STATUSES),
                )
            ).all()
        if not self.samples:
            if self._watch is not None:
                self._watch()
            for study in studies:
                if feedable(study):
                    self._refresh(study)
            return
        for study in closed:
            discard(self.rt, study, _why_closed(study.status))
        open_ids = {study.id for study in studies if feedable(study)}
        for study_id in list(self._owned):
            if study_id not in open_ids:
                self._release(study_id)
        live: int | None = None
        for study in studies:
            if self._stop.is_set() or not feedable(study):
                continue
            self._refresh(study)
            if not self._own(study.id):
                continue
            if live is None:
                live = workers_seen.count_live(self.rt)
            self._top_up(study, live)

    # --- the cache ----------------------------------------------------------------------

    def _refresh(self, study: StudyRow, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._refreshed.get(study.id, -REFRESH_S) >= REFRESH_S:
            self.rt.optuna.refresh(study)
            self._refreshed[study.id] = now

    # --- which process samples a study ------------------------------------------------------

    def _own(self, study_id: int) -> bool:
        """Whether this process samples the study: renews a claim about to expire, takes
        over one that expired. (Renewal is in memory until half the TTL has passed.)"""
        ttl = self.rt.settings.sampler_ttl_s
        now = time.monotonic()
        expires = self._owned.get(study_id)
        if expires is not None and expires - now > ttl / 2:
            return True
        until = utcnow() + timedelta(seconds=ttl)
        with self.rt.unit_of_work(), self.rt.sessions.begin() as s:
            taken = cast(
                CursorResult[Any],
                s.execute(
                    update(SamplerRow)
                    .where(
                        SamplerRow.study_id == study_id,
                        (SamplerRow.owner == self.owner) | (SamplerRow.expires_at < utcnow()),
                    )
                    .values(owner=self.owner, expires_at=until)
                ),
            )
            got = taken.rowcount == 1
        if not got:
            exists = False
            with self.rt.sessions() as s:
                exists = s.get(SamplerRow, study_id) is not None
            if not exists:
                try:
                    with self.rt.unit_of_work(), self.rt.sessions.begin() as s:
                        s.add(SamplerRow(study_id=study_id, owner=self.owner, expires_at=until))
                    got = True
                except IntegrityError:
                    got = False  # another process claimed it first
        if not got:
            self._owned.pop(study_id, None)
            return False
        if expires is None:
            log.info("sampling study %s in this process (%s)", study_id, self.owner[:8])
            self._refreshed.pop(study_id, None)  # a new owner reads the study afresh
        self._owned[study_id] = now + ttl
        return True

    def _release(self, study_id: int) -> None:
        self._owned.pop(study_id, None)
        self._failures.pop(study_id, None)
        with self.rt.unit_of_work(), self.rt.sessions.begin() as s:
            s.execute(
                delete(SamplerRow).where(
                    SamplerRow.study_id == study_id, SamplerRow.owner == self.owner
                )
            )

    def _release_all(self) -> None:
        for study_id in list(self._owned):
            try:
                self._release(study_id)
            except Exception:  # the database is going away with us: the TTL frees them
                log.warning("could not release the sampling of study %s", study_id)

    # --- topping up ----------------------------------------------------------------------

    def _top_up(self, study: StudyRow, live_workers: int) -> None:
        ahead = 0 if study.spec.get("seed") is not None else self.rt.settings.suggestions_ahead
        target = max(1, live_workers) + ahead
        ready_count = (
            select(func.count())
            .select_from(SuggestionRow)
            .where(SuggestionRow.study_id == study.id)
            .scalar_subquery()
        )
        with self.rt.sessions() as s:  # one statement: one consistent view on PostgreSQL too
            free, charged, ready, running = s.execute(
                select(
                    StudyRow.n_trials - StudyRow.slots_used,
                    StudyRow.epochs_charged,
                    ready_count,
                    _live_trials(study.id),
                ).where(StudyRow.id == study.id)
            ).one()
        if study.epoch_budget is not None:  # the trials whose every epoch still fits
            free = min(free, (study.epoch_budget - charged) // study.epochs)
        kept = winners.reserve(study)
        if kept and free - ready <= kept:
            # The search is done but for the trials kept for the re-evaluation: once its
            # last trials have ended, the best configurations are queued again.
            if ready or running:
                return
            winners.queue(self.rt, study)
            kept = 0
        wanted = min(target - ready, free - ready - kept)
        if wanted <= 0:
            return
        self._refresh(study)
        for _ in range(wanted):
            if self._stop.is_set():
                return
            try:
                self._suggest(study)
            except _Closed:  # stopped since this tick read it: its stop failed the rest
                return
            except Exception as exc:
                self._failed(study, exc)
                return
            self._failures.pop(study.id, None)

    def _suggest(self, study: StudyRow) -> None:
        def record(conn: Connection, trial_id: int, number: int, params: dict[str, Any]) -> None:
            # (in the transaction that writes the trial: on SQLite this process holds the
            # database's one write lock once per suggestion, and briefly). A study stopped
            # since this tick read it gets neither the trial nor its row: raising rolls
            # both back (on SQLite no stop can commit inside this write transaction).
            if _status_now(conn, study.id) not in OPEN_STATUSES:
                raise _Closed
            conn.execute(
                _SUGGESTIONS.insert().values(_suggested(study, trial_id, number, params, 0))
            )

        trial_id, number, params, queued = self.rt.optuna.draw(
            study, writing=self.rt.unit_of_work, then=record
        )
        if queued:  # (a waiting trial, which Optuna's own ``ask`` wrote)
            # A prior or a re-evaluation: which one, read here off the request path.
            fold, reevaluates = self.rt.optuna.reevaluation(trial_id)
            row = suggestion(
                study, trial_id, number, params, priority=QUEUED, fold=fold, reevaluates=reevaluates
            )
            with self.rt.unit_of_work(), self.rt.sessions.begin() as s:
                s.add(row)
        # A stop reads the rows to discard after it commits its status; a row committed
        # after that read is this process's to discard, and it sees the status now.
        with self.rt.sessions() as s:
            status = _status_now(s, study.id)
        if status not in OPEN_STATUSES:
            discard(self.rt, study, _why_closed(status))
            raise _Closed
        self.rt.fed_one()  # one waiting lease claims it (across the process line)

    def _failed(self, study: StudyRow, exc: Exception) -> None:
        failures = self._failures[study.id] = self._failures.get(study.id, 0) + 1
        log.warning("sampling %s failed (%d in a row): %s", study.name, failures, exc)
        if failures < MAX_FAILURES:
            return
        reason = f"the sampler failed {failures} times in a row: {type(exc).__name__}: {exc}"
        with self.rt.unit_of_work(), self.rt.sessions.begin() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study.id, StudyRow.status.in_(OPEN_STATUSES))
                .values(status=StudyStatus.FAILED, reason=reason[:2000], finished_at=utcnow())
            )
        log.error("study %s failed: %s", study.name, reason)
