"""The service's Optuna: its storage in the service's database, the sampler and pruner of
a study, and the ask / report / tell of a trial. The domain reaches Optuna through this
module only; besides it, ``search_space.optuna_space`` samples a space through a trial,
``storage.migrate`` upgrades Optuna's schema, and ``api.app`` maps Optuna's storage
error to a 503."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import Connection

from search_space import (
    SearchSpace,
)
from search_space.optuna_space import suggest
from service.states import Sampler
from service.storage import optuna_writes
from service.storage.engine import engine_kwargs
from service.storage.optuna_cache import Ended, ServiceCache
from service.storage.optuna_choices import grid_of, make_pruner, make_sampler
from service.storage.optuna_draft import Draft
from service.storage.optuna_files import StudyFiles
from service.storage.tables import StudyRow

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

DELETE_ATTEMPTS = 5
"""Tries at deleting an Optuna study before giving up (see ``delete_study``)."""

_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
_RERUN_KEEPS = frozenset({"fixed_params", "reevaluates", "fold"})
"""The user attributes a lost trial's re-run keeps: what it is (a re-evaluation, never
pruned, on its fold), not what happened to it."""

DuplicateStudy = optuna.exceptions.DuplicatedStudyError


def _optuna_id(row: StudyRow) -> int:
    if row.optuna_study_id is None:
        raise RuntimeError(f"study {row.name!r} has no Optuna study")
    return row.optuna_study_id


class OptunaAdapter:
    """Optuna's storage in the service's database, and the studies the service drives."""

    def __init__(
        self, url: str, *, busy_timeout_s: float, artifact_dir: Path | None = None
    ) -> None:
        self.rdb = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url, busy_timeout_s=busy_timeout_s),
            skip_table_creation=True,  # `hpo migrate` owns the schema
        )
        # One cache of the trials for the life of the process, which only the feeder reads
        # from the database (``refresh``): samplers and pruners work from memory, where a
        # cache per ``optuna.load_study`` re-read every running trial of the study on each
        # lease and each epoch report (see ``optuna_cache``).
        self.storage = ServiceCache(self.rdb)
        # Each study's ``optuna.Study`` (with its pruner), made once.
        self._studies: dict[int, optuna.Study] = {}
        # The sampler of each unseeded study, kept for the life of the process: TPE keeps
        # the study's search space up to date incrementally, where a new sampler for every
        # lease recomputed it over every trial. Optuna shares one sampler between threads
        # itself (``optimize(n_jobs=...)``).
        self._samplers: dict[tuple[int, str], optuna.samplers.BaseSampler] = {}
        self._lock = threading.Lock()
        self.files = StudyFiles(self.storage, artifact_dir)

    def close(self) -> None:
        self.rdb.engine.dispose()

    def attach_history(self, trial_id: int, history: dict[str, list[float]]) -> None:
        """The trial's per-epoch history, for the dashboard (before it is told finished)."""
        self.files.history(self.storage.get_trial(trial_id), history)

    def attach_model(self, row: StudyRow, content: bytes) -> None:
        """The retrained best model, as the study's ``NAME-best.keras``."""
        self.files.model(self._study(row), content)

    def create_study(
        self,
        name: str,
        direction: str,
        note: dict[str, Any],
        enqueue: list[dict[str, Any]],
        *,
        metric: str | None = None,
    ) -> int:
        """Create the Optuna study named ``name``, with ``enqueue`` as its first trials'
        parameters; returns its Optuna study id. The objective is named after the study's
        ``metric`` (by default the note's ``hpo_spec.metric``), which the dashboard shows."""
        study = optuna.create_study(
            study_name=name,
            storage=self.storage,
            direction="maximize" if direction == "maximize" else "minimize",
        )
        metric = metric or note.get("hpo_spec", {}).get("metric")
        if metric:
            with warnings.catch_warnings():  # experimental since 3.2, still in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([metric])
        for key, value in note.items():
            study.set_user_attr(key, value)
        for params in enqueue:
            study.enqueue_trial(params)
        self.files.note(study, note)
        return int(self.storage.get_study_id_from_name(name))

    def importances(self, row: StudyRow) -> dict[str, float]:
        """fANOVA parameter importances over the completed trials (``diagnostics.report``)."""
        from diagnostics.report import importances

        return importances(self._study(row))

    def save_report(self, row: StudyRow, text: str, report: dict[str, Any]) -> None:
        """The study report, as the study's note and figures (``StudyFiles.report``)."""
        self.files.report(self._study(row), row.metric, text, report)

    def has_study(self, name: str) -> bool:
        """Whether Optuna holds a study of this name: asked of the database, not the cache
        of names, which another process's (or thread's) deletion leaves behind."""
        return self.study_id(name) is not None

    def study_id(self, name: str) -> int | None:
        """The id of Optuna's study of this name (asked of the database), or None."""
        try:
            return int(self.rdb.get_study_id_from_name(name))
        except KeyError:
            return None

    def delete_study(self, study_id: int) -> bool:
        """Delete Optuna's study; whether it is gone. Optuna's delete ignores an integrity
        error and rolls back: a trial written into the study while its cascade runs (a
        draw of a feeder in flight) makes the study's row undeletable for that attempt.
        So it is checked, and tried again a few times."""
        for attempt in range(DELETE_ATTEMPTS):
            with contextlib.suppress(KeyError):  # deleted by another process meanwhile
                self.storage.delete_study(study_id)
            try:
                self.rdb.get_study_name_from_id(study_id)
            except KeyError:
                return True
            time.sleep(0.05 * (attempt + 1))
        return False

    def delete_study_if_exists(self, name: str) -> bool:
        """Delete Optuna's study of this name if there is one; whether none is left."""
        study_id = self.study_id(name)
        return study_id is None or self.delete_study(study_id)

    def _study(self, row: StudyRow) -> optuna.Study:
        optuna_id = _optuna_id(row)
        with self._lock:
            study = self._studies.get(optuna_id)
        if study is None:
            # The row knows its Optuna id: a name cached before the study was cleared and
            # made anew (by another process) must not lead this one to the old study.
            self.storage.learn_name(row.name, optuna_id)
            study = optuna.Study(
                study_name=row.name,
                storage=self.storage,
                pruner=make_pruner(row.spec["pruner"], row.epochs),
            )
            with self._lock:
                study = self._studies.setdefault(optuna_id, study)
        return study

    def refresh(self, row: StudyRow) -> None:
        """Read the study's new and running trials from the database into the cache that
        its sampler and pruner read (the feeder calls it a few times a second)."""
        self.storage.refresh(_optuna_id(row))

    def draw(
        self,
        row: StudyRow,
        *,
        writing: Callable[[], contextlib.AbstractContextManager[None]],
        then: Callable[[Connection, int, int, dict[str, Any]], None] | None = None,
    ) -> tuple[int, int, dict[str, Any], bool]:
        """Create a trial and sample its parameters: (trial id, number, params, whether
        it was queued). The
        sampler works from the cache; the trial is written in one transaction. A waiting
        trial (queued at submission, or a lost trial's re-run) comes first, through
        Optuna's own ``ask``, which writes it parameter by parameter.

        With a study ``seed`` the sampler is seeded from it and the number of trials so
        far, so sampling is deterministic whichever API process samples. ``writing`` is
        held while Optuna writes (the SQLite write lock), not while the sampler thinks.
        ``then(conn, trial id, number, params)`` writes the caller's row of a sampled
        trial in the transaction that writes the trial (not for a waiting trial).
        """
        optuna_id = _optuna_id(row)
        family = row.spec["model"]["family"]
        space = SearchSpace.parse(row.spec["search_space"], row.spec["fixed"], family=family)
        sampler = self._sampler(row, optuna_id, space)
        waiting = self.storage.get_all_trials(
            optuna_id, deepcopy=False, states=(TrialState.WAITING,)
        )
        if waiting:
            with writing():
                study = self._study(row)
                study.sampler = sampler
                trial = study.ask()
                try:
                    params = suggest(trial, space)
                except Exception:
                    study.tell(trial, state=TrialState.FAIL)  # leave no trial RUNNING forever
                    raise
            self.storage.refresh(optuna_id)  # the cache saw it waiting
            return trial._trial_id, trial.number, params, True
        draft = Draft(self.storage)
        trial = optuna.Study(study_name=row.name, storage=draft, sampler=sampler).ask()
        params = suggest(trial, space)  # (a failure here writes nothing)
        assert draft.trial is not None
        record = None
        if then is not None:
            record = lambda conn, trial_id, number: then(conn, trial_id, number, params)  # noqa: E731
        with writing():
            frozen = self.storage.create_trial_from(optuna_id, draft.trial, then=record)
        return frozen._trial_id, frozen.number, params, False

    def discard(self, row: StudyRow, trial_id: int, reason: str) -> None:
        """End a suggestion that was never handed out (its study stopped): failed, with
        ``hpo_outcome`` saying so, like a released trial."""
        self.finish(
            row, trial_id, "fail", attrs={"fail_reason": reason, "hpo_outcome": "discarded"}
        )

    def _sampler(
        self, row: StudyRow, optuna_id: int, space: SearchSpace
    ) -> optuna.samplers.BaseSampler:
        """The sampler for the study's next trial: a new one seeded from the trial count
        for a seeded study (the same draw whichever process asks), else the study's own."""
        name, seed = row.spec["sampler"], row.spec.get("seed")

        def new(index: int) -> optuna.samplers.BaseSampler:
            return make_sampler(
                name,
                base_seed=seed,
                index=index,
                grid=grid_of(space) if name == Sampler.GRID else None,
            )

        if seed is not None:
            return new(len(self.storage.get_all_trials(optuna_id, deepcopy=False)))
        key = (optuna_id, row.name)
        with self._lock:
            sampler = self._samplers.get(key)
            if sampler is None:
                sampler = self._samplers[key] = new(0)
        return sampler

    def result(self, row: StudyRow, trial_id: int) -> tuple[str, float | None, str | None] | None:
        """The result Optuna holds for a trial the service has not recorded: (state, value,
        reason); None while the trial runs, or when the service itself failed it as lost
        or released (``hpo_outcome``)."""
        frozen = self.storage.read_trial(_optuna_id(row), trial_id)
        if not frozen.state.is_finished() or (
            frozen.state == TrialState.FAIL and "hpo_outcome" in frozen.user_attrs
        ):
            return None
        if frozen.state == TrialState.COMPLETE:
            return "complete", frozen.value, None
        if frozen.state == TrialState.PRUNED:
            step = frozen.last_step
            return "pruned", None if step is None else frozen.intermediate_values[step], None
        return "fail", None, frozen.user_attrs.get("fail_reason")

    def given_back(self, row: StudyRow, trial_id: int) -> tuple[str, str] | None:
        """How the service already failed a trial it gave back, ``(outcome, reason)``
        (lost or released), or None."""
        frozen = self.storage.read_trial(_optuna_id(row), trial_id)
        outcome = frozen.user_attrs.get("hpo_outcome")
        if frozen.state != TrialState.FAIL or outcome is None:
            return None
        return str(outcome), str(frozen.user_attrs.get("fail_reason", ""))

    def write_step(self, conn: Connection, trial_id: int, step: int, value: float) -> bool:
        """An epoch's value in the caller's transaction (``optuna_writes.write_step``)."""
        return optuna_writes.write_step(conn, trial_id, step, value)

    def end_trial(
        self,
        conn: Connection,
        trial_id: int,
        state: str,
        *,
        value: float | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Ended | None:
        """End a running trial in the caller's transaction (``optuna_writes.end_trial``);
        call ``ended`` once it commits."""
        return optuna_writes.end_trial(conn, trial_id, _STATES[state], value=value, attrs=attrs)

    def ended(self, row: StudyRow, end: Ended) -> None:
        """After ``end_trial``'s transaction committed: this process's sampler and pruners
        see the trial finished at once (from its copy, or read back if it has none)."""
        self.storage.ended(_optuna_id(row), end)

    def judge(self, row: StudyRow, trial_id: int, step: int, value: float) -> bool:
        """The pruner's answer on an epoch's value just written: whether to stop. It
        compares with the trials in the cache (as of the last refresh, and those this
        process ended), not re-read from the database on every report."""
        self.storage.wrote_step(trial_id, step, value)
        study = self._study(row)
        trial = self.storage.get_trial(trial_id)
        if "reevaluates" in trial.user_attrs:  # (``winners``: judged on all its epochs)
            return False
        return bool(study.pruner.prune(study, trial))

    def reevaluation(self, trial_id: int) -> tuple[int, int | None]:
        """What a queued trial is (``winners``): (the split it trains on, the number of
        the trial it repeats), from its user attributes ``fold`` and ``reevaluates``;
        (0, None) for any other trial: the fixed split, no repeat."""
        attrs = self.storage.get_trial(trial_id).user_attrs
        of = attrs.get("reevaluates")
        return int(attrs.get("fold", 0)), None if of is None else int(of)

    def enqueue(self, row: StudyRow, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Queue a trial of these parameters, first in line (``draw`` takes it)."""
        self._study(row).enqueue_trial(params, user_attrs=attrs)

    def finish(
        self,
        row: StudyRow,
        trial_id: int,
        state: str,
        *,
        value: float | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> bool:
        """End a running trial as complete, pruned or fail. Returns whether the trial now
        holds that state: False when another process ended it first (a reaper and a
        ``complete`` racing), in which case nothing is changed."""
        try:
            if not self.storage.get_trial(trial_id).state.is_finished():
                for key, attr in (attrs or {}).items():
                    self.storage.set_trial_user_attr(trial_id, key, attr)
                study = self._study(row)
                number = self.storage.get_trial_number_from_id(trial_id)
                if state == "complete":
                    study.tell(number, value, state=TrialState.COMPLETE, skip_if_finished=True)
                else:
                    study.tell(number, state=_STATES[state], skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process ended it between our look and our write
        # As the database holds it (and cached: its sampler and pruner see it now).
        return bool(self.storage.read_trial(_optuna_id(row), trial_id).state == _STATES[state])

    def rerun(self, row: StudyRow, trial_id: int) -> tuple[int, int]:
        """A new trial with the parameters of ``trial_id`` (lost or released), written in
        one transaction and running at once, so it is the next suggestion handed out:
        (trial id, number)."""
        old = self.storage.get_trial(trial_id)
        template = optuna.trial.FrozenTrial(
            number=0,  # (Optuna numbers it)
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=old.params,
            distributions=old.distributions,
            user_attrs={
                **{k: v for k, v in old.user_attrs.items() if k in _RERUN_KEEPS},
                "hpo_reruns_trial": trial_id,
            },
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )
        frozen = self.storage.create_trial_from(_optuna_id(row), template)
        return frozen._trial_id, frozen.number
