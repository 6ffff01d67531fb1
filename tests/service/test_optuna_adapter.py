"""What the dashboard (or anyone reading the study with Optuna) sees of a study the service
drives, on both databases: the objective named after the study's metric, each trial's
searched parameters as its params, its fixed values as the ``fixed_params`` user
attribute, and parameter importances over the searched parameters only. And every sampler
runs a space with a single searched parameter, or none."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search_space import Fixed, SearchSpace, SpaceError
from service.storage.migrate import migrate
from service.storage.optuna_adapter import OptunaAdapter
from service.storage.optuna_choices import SAMPLERS, grid_of
from service.storage.tables import StudyRow
from tests.service.conftest import BACKENDS, _database_url

# The service's qmc sampler is Optuna's QMCSampler, still experimental in Optuna 5.
pytestmark = pytest.mark.filterwarnings(
    "ignore:QMCSampler is experimental:optuna.exceptions.ExperimentalWarning"
)

FIXED = {"optimizer": "momentum", "lr_schedule": "constant", "kernel_initializer": "he_normal"}
SEARCHED = {
    "learning_rate": {"low": 1e-3, "high": 1e-1, "log": True},
    "dropout_rate": {"low": 0.0, "high": 0.5, "step": 0.1},
    "hidden_units": {"choices": [32, 64]},
}


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = _database_url(request.param, request) or f"sqlite:///{tmp_path / 'adapter.db'}"
    migrate(url)
    return url


@pytest.fixture
def bridge(database_url: str) -> Any:
    bridge = OptunaAdapter(database_url, busy_timeout_s=10)
    yield bridge
    bridge.close()


def _row(
    bridge: OptunaAdapter,
    name: str,
    *,
    search_space: dict[str, Any],
    fixed: dict[str, Any],
    sampler: str = "tpe",
    seed: int | None = None,
    metric: str = "val_accuracy",
    enqueue: list[dict[str, Any]] | None = None,
) -> StudyRow:
    spec = {
        "sampler": sampler,
        "pruner": "median",
        "seed": seed,
        "search_space": search_space,
        "fixed": fixed,
        "model": {"family": "mlp"},
    }
    note = {"hpo_spec": {**spec, "metric": metric}}  # as service.domain.studies writes it
    optuna_id = bridge.create_study(name, "maximize", note, enqueue or [])
    return StudyRow(id=1, name=name, optuna_study_id=optuna_id, epochs=3, spec=spec)


def _space(row: StudyRow) -> SearchSpace:
    return SearchSpace.parse(row.spec["search_space"], row.spec["fixed"])


def _searched(space: SearchSpace) -> set[str]:
    return {n for n, d in space.dimensions if not isinstance(d, Fixed) and space.can_be_active(n)}


def _run(bridge: OptunaAdapter, row: StudyRow, n: int) -> list[dict[str, Any]]:
    """``n`` trials leased and completed, as workers would; their whole configurations."""
    drawn = []
    for i in range(n):
        trial_id, _number, params = bridge.draw(row, writing=nullcontext)[:3]
        value = (
            0.5 + 0.4 * math.sin(i) if "learning_rate" not in params else params["learning_rate"]
        )
        assert bridge.finish(row, trial_id, "complete", value=value)
        drawn.append(params)
    return drawn


def test_the_dashboard_sees_the_metric_searched_params_and_fixed_values(
    bridge: OptunaAdapter, database_url: str
) -> None:
    row = _row(bridge, "shown", search_space=SEARCHED, fixed=FIXED, metric="val_auc", seed=4)
    drawn = _run(bridge, row, 8)
    space = _space(row)
    searched = _searched(space)
    assert searched == set(SEARCHED)  # (the other defaults searched are fixed in FIXED)

    study = optuna.load_study(study_name="shown", storage=database_url)
    assert study.metric_names == ["val_auc"]
    assert len(study.trials) == 8
    for trial, params in zip(study.trials, drawn, strict=True):
        assert set(trial.params) == searched
        fixed = trial.user_attrs["fixed_params"]
        assert FIXED.items() <= fixed.items()
        assert fixed["momentum"] == 0.9  # active: the fixed optimizer is momentum
        assert set(fixed) == set(params) - searched
        # The service's lease holds the whole configuration; Optuna holds it in two parts.
        assert {**fixed, **trial.params} == params
    importances = optuna.importance.get_param_importances(study)
    assert set(importances) == searched
    assert set(study.best_params) == searched


def test_create_study_takes_the_metric_from_its_argument_or_none(
    bridge: OptunaAdapter, database_url: str
) -> None:
    bridge.create_study("named", "minimize", {"hpo_spec": {"metric": "val_loss"}}, [])
    bridge.create_study("given", "minimize", {}, [], metric="val_mae")
    bridge.create_study("unnamed", "minimize", {}, [])
    names = {
        name: optuna.load_study(study_name=name, storage=database_url).metric_names
        for name in ("named", "given", "unnamed")
    }
    assert names == {"named": ["val_loss"], "given": ["val_mae"], "unnamed": None}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_a_single_searched_parameter(
    bridge: OptunaAdapter, database_url: str, sampler: str
) -> None:
    everything = SearchSpace.parse(None, None).sane_params()
    fixed = {k: v for k, v in everything.items() if k != "optimizer"}
    choices = ["adam", "sgd", "momentum"]
    kwargs: dict[str, Any] = {
        "search_space": {"optimizer": {"choices": choices}},
        "fixed": fixed,
        "sampler": sampler,
        "seed": 3,
    }
    one = _run(bridge, _row(bridge, "one", **kwargs), 6)
    again = _run(bridge, _row(bridge, "again", **kwargs), 6)
    assert one == again  # a seeded study draws the same
    space = SearchSpace.parse(kwargs["search_space"], fixed)
    for params in one:
        assert space.check_params(params, ("params",)) == []
        assert ("momentum" in params) == (params["optimizer"] == "momentum")
        assert {k: v for k, v in params.items() if k != "momentum"} == {
            **fixed,
            "optimizer": params["optimizer"],
        }
    if sampler == "grid":
        # Each point once, then (exhausted) again. With seed 3 a grid once ran a point twice
        # and another never: each trial's sampler shuffled the grid with its own seed.
        assert sorted(p["optimizer"] for p in one[:3]) == sorted(choices)
    for trial in optuna.load_study(study_name="one", storage=database_url).trials:
        assert list(trial.params) == ["optimizer"]
        assert trial.user_attrs["fixed_params"].items() >= fixed.items()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_a_space_with_nothing_searched(
    bridge: OptunaAdapter, database_url: str, sampler: str
) -> None:
    everything = SearchSpace.parse(None, None).sane_params()
    row = _row(bridge, "none", search_space={}, fixed=everything, sampler=sampler, seed=2)
    assert _run(bridge, row, 2) == [everything, everything]
    for trial in optuna.load_study(study_name="none", storage=database_url).trials:
        assert trial.params == {} and trial.user_attrs["fixed_params"] == everything


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_an_enqueued_full_configuration_is_leased_whole(
    bridge: OptunaAdapter, database_url: str, sampler: str
) -> None:
    search = {"dropout_rate": SEARCHED["dropout_rate"], "hidden_units": SEARCHED["hidden_units"]}
    fixed = {**FIXED, "learning_rate": 0.01}  # (a grid has no continuous range)
    first = {**SearchSpace.parse(search, fixed).sane_params(), "hidden_units": 64}
    row = _row(bridge, "queued", search_space=search, fixed=fixed, sampler=sampler, enqueue=[first])
    trial_id, _number, params = bridge.draw(row, writing=nullcontext)[:3]
    assert params == first
    # A lost trial comes back with its whole configuration (``OptunaAdapter.rerun``).
    bridge.finish(row, trial_id, "fail")
    again_id, _number = bridge.rerun(row, trial_id)
    again_trial = optuna.load_study(study_name="queued", storage=database_url).trials[-1]
    assert again_trial._trial_id == again_id != trial_id
    assert again_trial.state == TrialState.RUNNING
    assert again_trial.user_attrs["hpo_reruns_trial"] == trial_id
    assert {**again_trial.user_attrs["fixed_params"], **again_trial.params} == first
    searched = _searched(_space(row))
    for trial in optuna.load_study(study_name="queued", storage=database_url).trials:
        assert set(trial.params) == searched
        assert {**trial.user_attrs["fixed_params"], **trial.params} == first


def test_the_grid_holds_searched_values_only() -> None:
    space = SearchSpace.parse(
        {"dropout_rate": {"low": 0.0, "high": 0.2, "step": 0.1}, "hidden_units": {"choices": [8]}},
        {"learning_rate": 0.01, **FIXED},
    )
    grid = grid_of(space)
    assert grid["dropout_rate"] == [0.0, 0.1, 0.2] and grid["hidden_units"] == [8]
    assert not set(grid) & {"learning_rate", "momentum", *FIXED, "activation", "batch_norm"}
    assert set(grid) == _searched(space)


def test_the_grid_still_refuses_continuous_ranges_and_too_many_points() -> None:
    with pytest.raises(SpaceError) as continuous:
        grid_of(
            SearchSpace.parse(
                {"dropout_rate": {"low": 0.0, "high": 0.5}}, {**FIXED, "learning_rate": 0.01}
            )
        )
    assert [p.field for p in continuous.value.problems] == ["search_space.dropout_rate"]
    huge = {  # 50001 x 16 x 2 points
        "dropout_rate": {"low": 0.0, "high": 0.5, "step": 0.00001},
        "hidden_layers": {"low": 1, "high": 16},
        "batch_norm": {"choices": [True, False]},
    }
    with pytest.raises(SpaceError) as too_many:
        grid_of(SearchSpace.parse(huge, {**FIXED, "learning_rate": 0.01}))
    assert [p.field for p in too_many.value.problems] == ["sampler"]


def test_a_lost_reevaluations_rerun_is_still_a_reevaluation_on_its_fold(
    bridge: OptunaAdapter, database_url: str
) -> None:
    """``winners.queue`` marks a re-evaluation with ``reevaluates`` and ``fold``; the feeder
    reads both (``OptunaAdapter.reevaluation``) for its suggestion, and a lost one's re-run
    keeps both (else it would train on the fixed split, and could be pruned)."""
    search = {"dropout_rate": SEARCHED["dropout_rate"]}
    row = _row(bridge, "folds", search_space=search, fixed=FIXED)
    searched_id = bridge.draw(row, writing=nullcontext)[0]
    assert bridge.reevaluation(searched_id) == (0, None)  # a search trial: the fixed split
    params = bridge.storage.get_trial(searched_id).params
    bridge.enqueue(row, params, {"reevaluates": 0, "fold": 2})
    again_id, _number, again_params, queued = bridge.draw(row, writing=nullcontext)
    assert queued and {k: again_params[k] for k in params} == params
    assert bridge.reevaluation(again_id) == (2, 0)
    bridge.finish(row, again_id, "fail")
    rerun_id, _number = bridge.rerun(row, again_id)
    assert bridge.reevaluation(rerun_id) == (2, 0)
    rerun = optuna.load_study(study_name="folds", storage=database_url).trials[-1]
    assert rerun._trial_id == rerun_id and rerun.user_attrs["reevaluates"] == 0
    assert rerun.user_attrs["fold"] == 2  # (as written, not only in this process's copy)
