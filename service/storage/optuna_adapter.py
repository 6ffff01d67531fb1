"""The service's Optuna: its storage in the service's database, the sampler and pruner of
a study, and the ask / report / tell of a trial. The domain reaches Optuna through this
module only; besides it, ``search_space.optuna_space`` samples a space through a trial,
``storage.migrate`` upgrades Optuna's schema, and ``api.app`` maps Optuna's storage
error to a 503."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from search_space import (
    Choices,
    Fixed,
    IntRange,
    Problem,
    SearchSpace,
    SpaceError,
)
from search_space.optuna_space import suggest
from service.states import Pruner, Sampler
from service.storage.engine import engine_kwargs
from service.storage.tables import StudyRow

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SAMPLERS: tuple[str, ...] = tuple(Sampler)
PRUNERS: tuple[str, ...] = tuple(Pruner)
MAX_GRID_POINTS = 1_000_000

_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


def derive_seed(base: int | None, index: int) -> int:
    """A distinct, reproducible 31-bit seed for the ``index``-th draw of a study seeded
    ``base`` (0 when the study has no seed)."""
    return ((base or 0) * 1_000_003 + index) % (2**31)


def grid_of(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid of a finite space: every value of every searched parameter that can be
    active. Fixed values are not in it: ``suggest`` does not ask Optuna for them.

    Raises:
        SpaceError: a searched parameter is continuous (a float range without a step), or
            the grid has more than ``MAX_GRID_POINTS`` points.
    """
    grid: dict[str, list[Any]] = {}
    problems = []
    for name, dim in space.dimensions:
        if isinstance(dim, Fixed) or not space.can_be_active(name):
            continue
        if isinstance(dim, Choices):
            grid[name] = list(dim.choices)
        elif isinstance(dim, IntRange):
            grid[name] = list(range(dim.low, dim.high + 1, dim.step))
        elif dim.step is not None:
            n = round((dim.high - dim.low) / dim.step)
            grid[name] = [round(dim.low + k * dim.step, 12) for k in range(n + 1)]
        else:
            problems.append(
                Problem(
                    ("search_space", name),
                    "is continuous, which the grid sampler cannot "
                    "enumerate: give it a step, fix it, or use another sampler",
                    dim.to_json(),
                )
            )
    if problems:
        raise SpaceError(problems)
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_GRID_POINTS:
        raise SpaceError(
            [
                Problem(
                    ("sampler",), f"grid has {points} points, more than {MAX_GRID_POINTS}", "grid"
                )
            ]
        )
    return grid


def make_sampler(
    name: str, *, base_seed: int | None, index: int, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler for its ``index``-th trial. Seeded studies get a seed derived
    from their seed and the trial count, so sampling is the same whichever process asks."""
    seed = None if base_seed is None else derive_seed(base_seed, index)
    if name == Sampler.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if name == Sampler.QMC:
        # The QMC sequence position lives in the study's storage; the scrambling seed must
        # stay the study's own for the sequence to stay one sequence.
        return optuna.samplers.QMCSampler(
            seed=base_seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_asynchronous_seeding=False,
            warn_independent_sampling=False,
        )
    if name == Sampler.GRID:
        assert grid is not None
        # The seed shuffles the grid, and a trial's grid id indexes the shuffled grid: it
        # must be the study's own seed, or each trial's sampler would number the points
        # differently and a seeded study would run some twice and others never.
        return optuna.samplers.GridSampler(grid, seed=base_seed)
    # Optuna 5: multivariate TPE with the constant liar, right for parallel workers.
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == Pruner.NONE:
        return optuna.pruners.NopPruner()
    if name == Pruner.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == Pruner.SUCCESSIVE_HALVING:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    # Judge no trial on its first quarter of epochs, and only once 5 trials have finished.
    # Steps are 1-based epochs and Optuna skips steps < n_warmup_steps, hence the + 1.
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 4 + 1)


DuplicateStudy = optuna.exceptions.DuplicatedStudyError


def check_samplable(space: SearchSpace) -> None:
    """Sample ``space`` once in memory, so a study that cannot be sampled is refused at
    submission rather than failing every lease."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest(study.ask(), space)


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
        # One cache of finished trials for the life of the process, as Optuna keeps for a
        # storage URL. Handed a bare RDBStorage, every optuna.load_study wraps it in a new,
        # empty cache, so each lease and each epoch report re-read every trial of the study
        # (benchmarks/feeding.py measured 16x fewer leases a second than plain Optuna at
        # 100 trials). Only finished trials are cached: they never change, so several API
        # processes on one database still agree; running trials are read from the database.
        self.storage = optuna.storages._CachedStorage(self.rdb)
        # The sampler of each unseeded study, kept for the life of the process: TPE keeps
        # the study's search space up to date incrementally, where a new sampler for every
        # lease recomputed it over every trial. Optuna shares one sampler between threads
        # itself (``optimize(n_jobs=...)``).
        self._samplers: dict[tuple[int, str], optuna.samplers.BaseSampler] = {}
        self._samplers_lock = threading.Lock()
        self.artifacts: FileSystemArtifactStore | None = None
        if artifact_dir is not None:
            artifact_dir.mkdir(parents=True, exist_ok=True)
            self.artifacts = FileSystemArtifactStore(str(artifact_dir))

    def close(self) -> None:
        self.rdb.engine.dispose()

    def _upload(
        self,
        target: optuna.Study | optuna.trial.FrozenTrial,
        name: str,
        content: bytes,
        mimetype: str,
    ) -> None:
        """Store a file in the artifact store, attached to a study or a running trial, so
        the dashboard shows it and offers it for download."""
        if self.artifacts is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(content)
            optuna.artifacts.upload_artifact(
                artifact_store=self.artifacts,
                file_path=str(path),
                study_or_trial=target,
                storage=self.storage,
                mimetype=mimetype,
            )

    def attach_history(self, trial_id: int, history: dict[str, list[float]]) -> None:
        """The trial's per-epoch training history, as ``history.json`` (before the trial
        is told finished: Optuna does not change finished trials)."""
        self._upload(
            self.storage.get_trial(trial_id),
            "history.json",
            json.dumps(history).encode(),
            "application/json",
        )

    def attach_model(self, row: StudyRow, content: bytes) -> None:
        """The retrained best model, as the study's ``best-model.keras``."""
        self._upload(
            self._study(row), f"{row.name}-best.keras", content, "application/octet-stream"
        )

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
        # The dashboard shows the study's note: the spec as submitted, resolved.
        import optuna_dashboard  # (a second of imports, sklearn's among them: when needed)

        optuna_dashboard.save_note(
            study, "## Submitted spec\n\n```json\n" + json.dumps(note, indent=2) + "\n```\n"
        )
        return int(self.storage.get_study_id_from_name(name))

    def has_study(self, name: str) -> bool:
        try:
            self.storage.get_study_id_from_name(name)
        except KeyError:
            return False
        return True

    def delete_study_if_exists(self, name: str) -> None:
        if self.has_study(name):
            optuna.delete_study(study_name=name, storage=self.storage)

    def _study(self, row: StudyRow) -> optuna.Study:
        spec = row.spec
        return optuna.load_study(
            study_name=row.name,
            storage=self.storage,
            pruner=make_pruner(spec["pruner"], row.epochs),
        )

    def ask(self, row: StudyRow) -> tuple[int, int, dict[str, Any]]:
        """Create a trial and sample its parameters: (trial id, number, params).

        With a study ``seed`` the sampler is seeded from it and the number of trials so
        far, so sampling is deterministic whichever API process serves the lease.
        """
        study = self._study(row)
        optuna_id = _optuna_id(row)
        family = row.spec["model"]["family"]
        space = SearchSpace.parse(row.spec["search_space"], row.spec["fixed"], family=family)
        study.sampler = self._sampler(row, optuna_id, space)
        trial = study.ask()
        try:
            params = suggest(trial, space)
        except Exception:
            study.tell(trial, state=TrialState.FAIL)  # leave no trial RUNNING forever
            raise
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(optuna_id, trial.number)
        return int(trial_id), trial.number, params

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
            return new(self.storage.get_n_trials(optuna_id))
        key = (optuna_id, row.name)
        with self._samplers_lock:
            sampler = self._samplers.get(key)
            if sampler is None:
                sampler = self._samplers[key] = new(0)
        return sampler

    def result(self, trial_id: int) -> tuple[str, float | None, str | None] | None:
        """The result Optuna holds for a trial the service has not recorded: (state, value,
        reason); None while the trial runs, or when the service itself failed it as lost
        or released (``hpo_outcome``)."""
        frozen = self.storage.get_trial(trial_id)
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

    def report(self, row: StudyRow, trial_id: int, step: int, value: float) -> bool | None:
        """Store an epoch's value; True when the pruner says the trial should stop, None
        when Optuna has already ended the trial."""
        try:
            self.storage.set_trial_intermediate_value(trial_id, step, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
        study = self._study(row)
        return bool(study.pruner.prune(study, self.storage.get_trial(trial_id)))

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
        return bool(self.storage.get_trial(trial_id).state == _STATES[state])

    def enqueue(self, row: StudyRow, params: dict[str, Any], *, replaces: int) -> None:
        """Queue ``params`` again, so a lost or released trial runs once more."""
        self._study(row).enqueue_trial(params, user_attrs={"hpo_reruns_trial": replaces})
