"""Optuna's storage as the service reads it: a cache of every study's trials that the
request path never refreshes (the draft storage that samples a trial without writing it
is ``optuna_draft``).

Why: Optuna's ``_CachedStorage`` keeps finished trials in memory but, on every
``get_all_trials``, reads every running trial of the study back from the database. The
sampler (constant liar) and the pruners call it once per suggestion and once per epoch
report, so each lease and each report cost a read of every running trial, and a commit per
parameter on top for a new trial. Here only the feeder (``service.domain.feeder``) reads the
database, a few times a second per open study; samplers and pruners work from memory, and a
new trial's parameters are written in one transaction (``create_trial_from``).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from optuna.distributions import distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, Table, func, or_, select


@dataclass(frozen=True)
class Ended:
    """A trial the service ended in its own transaction (``OptunaAdapter.end_trial``):
    what was written, and how many epoch values the database held then (``steps``, the
    last one ``last_step``), so the cache can tell whether its copy is whole."""

    trial_id: int
    state: TrialState
    value: float | None
    attrs: dict[str, Any]
    finished: datetime
    last_step: int | None
    steps: int


class ServiceCache(_CachedStorage):
    """Optuna's cache of a storage's trials, read from the database only on ``refresh``
    (and the first time a study is read). Running trials are as fresh as the last refresh;
    finished trials never change, and a trial this process creates is in it at once."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._read_once: set[int] = set()
        self._ids: dict[str, int] = {}
        # Running trials this process serves, kept up to date by its own writes, so an
        # epoch report does not read its trial back (params, values, attributes) to ask
        # the pruner. A report that skips a step (another API process took the one before)
        # drops the copy, and the next read goes to the database.
        self._live: dict[int, FrozenTrial] = {}
        # Each study's trials sorted by number, per set of states asked for, valid while
        # the study's version (bumped by every change to its cached trials) is the same:
        # Optuna's pruners and samplers ask on every report and suggestion, and Optuna
        # rebuilds the list from every trial each time (O(n) in Python per report).
        self._version: dict[int, int] = {}
        self._reads: dict[int, threading.Lock] = {}
        self._sorted: dict[tuple[int, Any], tuple[int, list[FrozenTrial]]] = {}

    def _add_trials_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        # A finished trial is final: a copy read while it still ran (a refresh racing the
        # ``ended`` of the call that finished it) must not bring it back to running, or
        # the pruner counts one completed trial fewer until the next refresh.
        trials = [
            t
            for t in trials
            if t.state.is_finished() or self._get_cached_trial(t._trial_id) is None
        ]
        super()._add_trials_to_cache(study_id, trials)
        if trials:
            self._version[study_id] = self._version.get(study_id, 0) + 1

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        key: tuple[int, Any] = (
            study_id,
            None if states is None else tuple(cast(Iterable[TrialState], states)),
        )
        self._read_trials_from_remote_storage(study_id)
        with self._lock:
            version = self._version.get(study_id, 0)
            memo = self._sorted.get(key)
        if memo is None or memo[0] != version:
            # (Optuna's own, which takes the lock; a change meanwhile bumps the version
            # again, so what is kept is never newer than the version it is kept under.)
            memo = (version, super().get_all_trials(study_id, deepcopy=False, states=states))
            with self._lock:
                self._sorted[key] = memo
        trials = list(memo[1])  # (a copy of the list: callers may change it)
        return copy.deepcopy(trials) if deepcopy else trials

    def get_study_id_from_name(self, study_name: str) -> int:
        with self._lock:
            known = self._ids.get(study_name)
        if known is not None:
            return known
        study_id = self._backend.get_study_id_from_name(study_name)
        with self._lock:
            self._ids[study_name] = study_id
        return study_id

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        study_id = super().create_new_study(directions, study_name)
        if study_name is not None:  # (a name cached from a study since deleted is stale)
            self.learn_name(study_name, study_id)
        return study_id

    def learn_name(self, study_name: str, study_id: int) -> None:
        """The study of this name is ``study_id`` (from the service's row, the truth)."""
        with self._lock:
            self._ids[study_name] = study_id

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        self.forget(study_id)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        if study_id in self._read_once:
            return  # the feeder refreshes; the request path reads memory
        with self._reading(study_id):
            if study_id in self._read_once:
                return  # read by the thread that held the study's lock before us
            self._refresh(study_id)

    def _reading(self, study_id: int) -> threading.Lock:
        """The lock of a study's reads from the database: one at a time, so the first
        read of a big study is made once, not by every request that arrives meanwhile
        (at 5,000 trials, 32 workers' reports each read the whole study, for minutes)."""
        with self._lock:
            return self._reads.setdefault(study_id, threading.Lock())

    def refresh(self, study_id: int) -> None:
        """Bring the study's cache up to date with the database: one query of the ids and
        states of the trials it may not know the end of, then the whole of only the trials
        it has never seen or that have finished since. (Optuna's own refresh reads every
        running trial in full each time: with 32 workers, most of what it read.)"""
        with self._reading(study_id):
            self._refresh(study_id)

    def _refresh(self, study_id: int) -> None:
        with self._lock:
            info = self._studies.setdefault(study_id, _StudyInfo())
            unfinished = set(info.unfinished_trial_ids)
            last = info.last_finished_trial_id
            known = {t._trial_id: t.state for t in info.trials.values()}
        with _create_scoped_session(self._backend.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id, models.TrialModel.state)
                .filter(
                    models.TrialModel.study_id == study_id,
                    or_(
                        models.TrialModel.trial_id > last,
                        models.TrialModel.trial_id.in_(unfinished),
                    ),
                )
                .all()
            )
        # New to this cache, or changed state (waiting -> running -> finished); a trial
        # that is still running has not changed (parameters are written once).
        wanted = {trial_id for trial_id, state in rows if known.get(trial_id) != state}
        trials = (
            self._backend._get_trials(
                study_id, states=None, included_trial_ids=wanted, trial_id_greater_than=_NONE
            )
            if wanted
            else []
        )
        with self._lock:
            info = self._studies.setdefault(study_id, _StudyInfo())
            self._add_trials_to_cache(study_id, trials)
            for trial_id, state in rows:
                if state.is_finished():
                    info.unfinished_trial_ids.discard(trial_id)
                    self._live.pop(trial_id, None)  # finished, perhaps by another process
                elif self._get_cached_trial(trial_id) is None:  # (not ended meanwhile)
                    info.unfinished_trial_ids.add(trial_id)
            finished = [trial_id for trial_id, state in rows if state.is_finished()]
            # Every trial at or below this is finished or in the unfinished set.
            info.last_finished_trial_id = max([last, *finished])
            self._read_once.add(study_id)

    # --- running trials: this process's copies -----------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            trial = self._get_cached_trial(trial_id) or self._live.get(trial_id)
        if trial is not None:
            return trial
        trial = self._backend.get_trial(trial_id)
        if not trial.state.is_finished():
            with self._lock:
                self._live[trial_id] = trial
        return trial

    def _running_in_cache(self, trial_id: int) -> FrozenTrial | None:
        if trial_id not in self._trial_id_to_study_id_and_number:
            return None
        study_id, number = self._trial_id_to_study_id_and_number[trial_id]
        trial = self._studies[study_id].trials.get(number)
        return trial if trial is not None and trial.state == TrialState.RUNNING else None

    def read_trial(self, study_id: int, trial_id: int) -> FrozenTrial:
        """The trial as the database holds it now (another process may have ended it);
        cached if finished, so this process's sampler and pruners see it at once."""
        trial = self._backend.get_trial(trial_id)
        with self._lock:
            if trial.state.is_finished():
                self._live.pop(trial_id, None)
                self._studies.setdefault(study_id, _StudyInfo())
                self._add_trials_to_cache(study_id, [trial])
        return trial

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
        self.wrote_step(trial_id, step, intermediate_value)

    def wrote_step(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Keep this process's copy of a running trial up to date with a step written."""
        with self._lock:
            live = self._live.get(trial_id)
            if live is None and step == 1:  # its first report: start from the cached copy
                seen = self._running_in_cache(trial_id)
                if seen is not None and not seen.intermediate_values:
                    live = self._live[trial_id] = copy.deepcopy(seen)
            if live is None:
                return
            steps = live.intermediate_values
            if step > max(steps, default=0) + 1:
                del self._live[trial_id]  # a step went through another process
            else:
                live.intermediate_values = {**steps, step: intermediate_value}

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._backend.set_trial_user_attr(trial_id, key=key, value=value)
        with self._lock:
            if (live := self._live.get(trial_id)) is not None:
                live.user_attrs = {**live.user_attrs, key: value}

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._backend.set_trial_system_attr(trial_id, key=key, value=value)
        with self._lock:
            if (live := self._live.get(trial_id)) is not None:
                live.system_attrs = {**live.system_attrs, key: value}

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._lock:
            self._live.pop(trial_id, None)
        return self._backend.set_trial_state_values(trial_id, state=state, values=values)

    def ended(self, study_id: int, end: Ended) -> None:
        """A trial this process ended: cached finished at once, from its running copy when
        that holds every epoch the database did, else read back."""
        with self._lock:
            live = self._live.pop(end.trial_id, None)
        whole = (
            live is not None
            and len(live.intermediate_values) == end.steps
            and max(live.intermediate_values, default=None) == end.last_step
        )
        if not whole or live is None:
            self.read_trial(study_id, end.trial_id)
            return
        live.state = end.state
        live.values = None if end.value is None else [end.value]
        live.datetime_complete = end.finished
        live.user_attrs = {**live.user_attrs, **end.attrs}
        with self._lock:
            info = self._studies.setdefault(study_id, _StudyInfo())
            self._add_trials_to_cache(study_id, [live])
            info.unfinished_trial_ids.discard(end.trial_id)

    def forget(self, study_id: int) -> None:
        """Drop a study from the cache (it was deleted)."""
        with self._lock:
            self._read_once.discard(study_id)
            self._studies.pop(study_id, None)
            self._version[study_id] = self._version.get(study_id, 0) + 1
            self._ids = {name: i for name, i in self._ids.items() if i != study_id}

    def create_trial_from(
        self,
        study_id: int,
        template: FrozenTrial,
        *,
        then: Callable[[Connection, int, int], None] | None = None,
    ) -> FrozenTrial:
        """Create a RUNNING trial with the template's parameters and attributes in one
        transaction and one flush; it is cached at once, so the next suggestion sees it.

        Optuna's own template path (``_create_new_trial``) writes each parameter with
        three queries of its own (benchmarks/feeding.py: as long as TPE's sampling at
        1,000 trials), and ORM rows in one flush still cost a quarter of a suggestion;
        this writes Optuna's own tables, numbered as Optuna numbers them (a test checks
        the trial reads back equal)."""
        started = template.datetime_start or datetime.now()
        trials = cast(Table, models.TrialModel.__table__)
        with self._backend.engine.begin() as conn:
            studies = cast(Table, models.StudyModel.__table__)
            conn.execute(  # (numbering: one new trial of a study at a time)
                select(studies.c.study_id).where(studies.c.study_id == study_id).with_for_update()
            )
            trial_id = conn.execute(
                trials.insert()
                .values(
                    study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=started
                )
                .returning(trials.c.trial_id)
            ).scalar_one()
            params = [
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": dist.to_internal_repr(template.params[name]),
                    "distribution_json": distribution_to_json(dist),
                }
                for name, dist in template.distributions.items()
            ]
            if params:
                conn.execute(cast(Table, models.TrialParamModel.__table__).insert(), params)
            for model, attrs in (
                (models.TrialUserAttributeModel, template.user_attrs),
                (models.TrialSystemAttributeModel, template.system_attrs),
            ):
                if attrs:
                    conn.execute(
                        cast(Table, model.__table__).insert(),
                        [
                            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                            for key, value in attrs.items()
                        ],
                    )
            number = int(  # as Optuna numbers a trial: the study's trials before it
                conn.scalar(
                    select(func.count())
                    .select_from(trials)
                    .where(trials.c.study_id == study_id, trials.c.trial_id < trial_id)
                )
                or 0
            )
            conn.execute(trials.update().where(trials.c.trial_id == trial_id).values(number=number))
            if then is not None:  # the caller's row of it, in the same transaction
                then(conn, trial_id, number)
        frozen = copy.deepcopy(template)
        frozen.number, frozen._trial_id, frozen.datetime_start = number, trial_id, started
        frozen.state = TrialState.RUNNING
        with self._lock:
            if study_id not in self._studies:
                self._studies[study_id] = _StudyInfo()
            self._add_trials_to_cache(study_id, [frozen])
            self._studies[study_id].unfinished_trial_ids.add(trial_id)
            self._live[trial_id] = copy.deepcopy(frozen)
        return frozen


_NONE = 2**31 - 1
"""A trial id beyond any (the largest INTEGER): ``_get_trials`` then reads exactly the ids
it is given."""
