"""Optuna's TPE, with its per-suggestion bookkeeping kept incrementally in numpy.

At thousands of trials, three quarters of a stock ``TPESampler`` suggestion is Python
work over every finished trial, repeated for every suggestion: splitting them into the
good and the bad (``_split_trials``: scores and sorts of ``FrozenTrial`` objects) and
turning their parameters into arrays (``_get_internal_repr``). Finished trials never
change, so :class:`FastTPESampler` keeps, per study, each finished trial's score and
internal parameter values in arrays that grow as trials finish, and makes the split with
index arrays. Running trials (the constant liar's, a few dozen) are read as Optuna reads
them. The Parzen estimators, the candidates and the choice are Optuna's own code on the
same observations in the same order, so the suggestions are the stock sampler's: the
tests compare the two draw by draw on the same seeded histories.

Only single-objective studies without constraints take the fast path; anything else
(several objectives, a constraints function, a gamma of its own, a trial that violates
a constraint) is the stock sampler's. This reimplements
``TPESampler._sample`` of Optuna 5.0: a new Optuna needs the equality tests to pass again.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.sampler import default_gamma
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

_STUDIES_KEPT = 32  # per process; a study read again after eviction is rebuilt once
_COMPLETE, _PRUNED = 0, 1


class _Finished:
    """One study's finished trials, one row each in the order they were first seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[int, int] = {}  # trial id -> row
        self.numbers: list[int] = []
        # A trial is the same trial if its id and the moment it ended are: a study made
        # again under the same name and id (a new in-memory storage) has other ones.
        self.ends: list[Any] = []
        self._state: list[int] = []
        self._value: list[float] = []  # complete trials' value (NaN when pruned)
        self._step: list[float] = []  # pruned trials' score: (-last step, its value)
        self._last: list[float] = []
        self._infeasible: list[float] = []  # the sum of violated constraints
        self._params: list[dict[str, Any]] = []
        self._arrays: dict[str, np.ndarray] | None = None
        self._columns: dict[tuple[str, BaseDistribution], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, trial: FrozenTrial, maximize: bool) -> None:
        self.rows[trial._trial_id] = len(self.numbers)
        self.numbers.append(trial.number)
        self.ends.append(trial.datetime_complete)
        complete = trial.state == TrialState.COMPLETE
        self._state.append(_COMPLETE if complete else _PRUNED)
        self._value.append(float(trial.value) if complete else math.nan)  # type: ignore[arg-type]
        # ``_get_pruned_trial_score`` of Optuna's TPE.
        if trial.intermediate_values:
            step, last = max(trial.intermediate_values.items())
            last = math.inf if math.isnan(last) else (-last if maximize else last)
            self._step.append(-step)
            self._last.append(last)
        else:
            self._step.append(1)
            self._last.append(0.0)
        self._infeasible.append(sum(v for v in trial.constraints.values() if v > 0))
        self._params.append(trial.params)
        self._arrays = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                "number": np.asarray(self.numbers, dtype=np.int64),
                "state": np.asarray(self._state, dtype=np.int8),
                "value": np.asarray(self._value, dtype=float),
                "step": np.asarray(self._step, dtype=float),
                "last": np.asarray(self._last, dtype=float),
                "infeasible": np.asarray(self._infeasible, dtype=float),
            }
        return self._arrays

    def column(self, name: str, dist: BaseDistribution) -> tuple[np.ndarray, np.ndarray]:
        """Every row's internal value of ``name`` under ``dist`` (NaN where the trial has
        no such parameter), and where it has one."""
        values, present = self._columns.get((name, dist), (np.empty(0), np.empty(0, bool)))
        if len(values) < len(self._params):
            new = self._params[len(values) :]
            values = np.concatenate(
                [values, [dist.to_internal_repr(p[name]) if name in p else math.nan for p in new]]
            )
            present = np.concatenate([present, [name in p for p in new]])
            self._columns[(name, dist)] = (values, present)
        return values, present


_studies: OrderedDict[tuple[str, int], _Finished] = OrderedDict()
_studies_lock = threading.Lock()


def _finished_of(study: Study) -> _Finished:
    key = (study.study_name, study._study_id)
    with _studies_lock:
        finished = _studies.get(key)
        if finished is None:
            finished = _studies[key] = _Finished()
        _studies.move_to_end(key)
        while len(_studies) > _STUDIES_KEPT:
            _studies.popitem(last=False)
        return finished


def _sorted_rows(rows: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """``rows`` sorted by ``keys`` (the last the primary), ties in the order given: as
    Python's stable ``sorted`` orders Optuna's trial lists."""
    return rows[np.lexsort(tuple(k[rows] for k in keys))] if len(rows) else rows


class FastTPESampler(TPESampler):
    """``TPESampler`` whose suggestions cost O(n) in numpy, not in Python, per suggestion.
    Same constructor and the same suggestions; see the module docstring."""

    def _sample(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if (
            len(study.directions) != 1
            or self._constraints_func is not None
            or self._gamma not in (None, default_gamma)
        ):
            return super()._sample(study, trial, search_space)
        self._gamma = default_gamma
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        maximize = study.direction == StudyDirection.MAXIMIZE
        finished = _finished_of(study)
        with finished.lock:
            running: list[FrozenTrial] = []
            new: list[FrozenTrial] = []
            known = 0
            rows, ends, live = finished.rows, finished.ends, TrialState.RUNNING
            for t in trials:  # (the one loop over every trial: attributes, not properties)
                if t.state is live:
                    if t._number != trial.number:
                        running.append(t)
                elif (row := rows.get(t._trial_id)) is not None and ends[
                    row
                ] == t.datetime_complete:
                    known += 1
                else:
                    new.append(t)
            if known != len(finished.rows):  # not this study's trials any more: start again
                finished = _Finished()
                with _studies_lock:
                    _studies[(study.study_name, study._study_id)] = finished
                new = [t for t in trials if t.state != TrialState.RUNNING]
            for t in new:
                finished.add(t, maximize)
            if any(finished.arrays()["infeasible"] > 0):  # (constraints: rare, and stock)
                return super()._sample(study, trial, search_space)
            below, above = self._split(finished, maximize)
            observed_below = self._observed(finished, below, [], search_space, study)
            observed_above = self._observed(finished, above, running, search_space, study)
        mpe_below = self._parzen_estimator_cls(
            observed_below, search_space, self._parzen_estimator_parameters
        )
        mpe_above = self._parzen_estimator_cls(
            observed_above, search_space, self._parzen_estimator_parameters
        )
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    def _split(self, finished: _Finished, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
        """Optuna's ``_split_trials`` on rows (constraints aside): the best complete
        trials, then the pruned ones that got furthest, fill the ``gamma(n)`` below."""
        a = finished.arrays()
        n_below = default_gamma(len(a["number"]))
        by_number = np.argsort(a["number"], kind="stable")
        complete = by_number[a["state"][by_number] == _COMPLETE]
        pruned = by_number[a["state"][by_number] == _PRUNED]
        complete = _sorted_rows(complete, -a["value"] if maximize else a["value"])
        pruned = _sorted_rows(pruned, a["last"], a["step"])
        below_complete = min(n_below, len(complete))
        below_pruned = min(max(0, n_below - below_complete), len(pruned))
        below = np.concatenate([complete[:below_complete], pruned[:below_pruned]])
        above = np.concatenate([complete[below_complete:], pruned[below_pruned:]])
        return below.astype(np.int64), above.astype(np.int64)

    def _observed(
        self,
        finished: _Finished,
        rows: np.ndarray,
        running: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
        study: Study,
    ) -> dict[str, np.ndarray]:
        """``_get_internal_repr`` of the rows and running trials, in trial-number order,
        of those that have every parameter of ``search_space``."""
        numbers = finished.arrays()["number"]
        columns = {name: finished.column(name, dist) for name, dist in search_space.items()}
        keep = np.ones(len(rows), dtype=bool)
        for _, present in columns.values():
            keep &= present[rows]
        rows = rows[keep]
        observed = {name: values[rows] for name, (values, _) in columns.items()}
        order_numbers = numbers[rows]
        live = [(t.number, self._get_params(t, study)) for t in running]
        live = [(number, p) for number, p in live if search_space.keys() <= p.keys()]
        if live:
            order_numbers = np.concatenate([order_numbers, [number for number, _ in live]])
            for name, dist in search_space.items():
                extra = [dist.to_internal_repr(p[name]) for _, p in live]
                observed[name] = np.concatenate([observed[name], np.asarray(extra, dtype=float)])
        order = np.argsort(order_numbers, kind="stable")
        return {name: values[order] for name, values in observed.items()}
