"""``FastTPESampler`` suggests exactly what Optuna's ``TPESampler`` suggests, draw by draw,
on the same histories: complete, pruned (some never reported, some with a NaN last
report), failed and running trials, tied values, a conditional parameter, both
directions; and it notices when the study it remembers is not the one it is asked about."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search_space import SearchSpace
from search_space.optuna_space import suggest
from service.storage.fast_tpe import FastTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

MOMENTUM = FloatDistribution(0.0, 0.99)


def _params(t: optuna.Trial) -> None:
    t.suggest_float("lr", 1e-4, 1.0, log=True)
    t.suggest_int("units", 8, 256, log=True)
    if t.suggest_categorical("opt", ["sgd", "adam", "rmsprop"]) == "sgd":
        t.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)
    t.suggest_float("dropout", 0.0, 0.5, step=0.05)


def _history(n: int, direction: str, seed: int, complete: float = 0.55) -> optuna.Study:
    rng = random.Random(seed)
    study = optuna.create_study(
        direction=direction, sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    for _ in range(n):
        t = study.ask()
        _params(t)
        r, value = rng.random(), round(rng.random(), 1)  # (rounded: many ties)
        if r < complete:
            study.tell(t, value)
        elif r < 0.85:  # pruned after 0 to 4 reports, some of them NaN
            for step in range(1, rng.randint(0, 4) + 1):
                t.report(float("nan") if rng.random() < 0.15 else round(rng.random(), 1), step)
            study.tell(t, state=TrialState.PRUNED)
        elif r < 0.9:
            study.tell(t, state=TrialState.FAIL)
        # else: left running, with the relative params TPE shares through system attrs
    return study


def _both(study: optuna.Study, seed: int) -> tuple[object, object]:
    """Each sampler's relative and independent draw for one new running trial."""
    study.sampler = optuna.samplers.RandomSampler(seed=seed)
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    draws = []
    for sampler in (optuna.samplers.TPESampler(seed=seed), FastTPESampler(seed=seed)):
        space = sampler.infer_relative_search_space(study, frozen)
        relative = sampler.sample_relative(study, frozen, space)
        draws.append((relative, sampler.sample_independent(study, frozen, "momentum", MOMENTUM)))
    _params(trial)  # (the random sampler's: the trial joins the history as a peer's would)
    if seed % 3:
        study.tell(trial, round(random.Random(seed).random(), 1))
    return draws[0], draws[1]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(
    ("size", "complete"),
    # (mostly pruned: the below set is filled from the pruned trials that got furthest)
    [(25, 0.55), (60, 0.55), (400, 0.55), (400, 0.05)],
)
def test_suggestions_equal_optunas_on_the_same_history(
    direction: str, size: int, complete: float
) -> None:
    study = _history(size, direction, seed=size, complete=complete)
    for k in range(6):  # the history grows between draws: the cache must follow it
        stock, fast = _both(study, seed=100 + k)
        assert stock[0], "the draw must be TPE's relative one, not its random start"
        assert fast == stock


def test_a_seeded_study_of_the_service_space_draws_the_same_trials() -> None:
    """The whole ask/suggest/tell loop on the service's default space."""
    space = SearchSpace.parse(None, None)
    drawn = []
    for sampler in (optuna.samplers.TPESampler(seed=3), FastTPESampler(seed=3)):
        study = optuna.create_study(sampler=sampler)
        rng = random.Random(5)
        params = []
        for _ in range(40):
            trial = study.ask()
            params.append(suggest(trial, space))
            if rng.random() < 0.3:
                trial.report(rng.random(), 1)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, rng.random())
        drawn.append(params)
    assert drawn[0] == drawn[1]


def test_a_study_made_again_under_the_same_name_and_id_is_read_afresh() -> None:
    """The sampler remembers a study by (name, id). A study made again on a new in-memory
    storage under the same name gets the same id, and trials with the same ids and
    numbers, but other ones: they must be read afresh, not taken for the remembered."""
    first = _history(60, "minimize", seed=1)
    _both(first, seed=1)  # remembered
    other = _history(150, "minimize", seed=2).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    again = optuna.create_study(study_name=first.study_name)
    again.add_trials(other)
    assert (again.study_name, again._study_id) == (first.study_name, first._study_id)
    stock, fast = _both(again, seed=7)
    assert fast == stock
