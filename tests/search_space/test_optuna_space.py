"""What a trial holds in Optuna: ``suggest`` returns the whole configuration, but asks
Optuna only for the searched parameters; the active fixed values go into the trial's
``fixed_params`` user attribute."""

from __future__ import annotations

import optuna
import pytest

from search_space import Fixed, SearchSpace
from search_space.optuna_space import FIXED_PARAMS_ATTR, suggest


def _searched(space: SearchSpace) -> set[str]:
    return {n for n, d in space.dimensions if not isinstance(d, Fixed) and space.can_be_active(n)}


def test_fixed_values_are_returned_but_not_suggested() -> None:
    space = SearchSpace.parse(
        {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
        {"optimizer": "momentum", "lr_schedule": "constant", "kernel_initializer": "he_normal"},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        params = suggest(trial, space)
        study.tell(trial, params["learning_rate"])
        frozen = study.trials[-1]
        # The fixed optimizer decides the condition: momentum is active, and fixed too.
        assert params["optimizer"] == "momentum" and params["momentum"] == 0.9
        assert "lr_decay_rate" not in params  # lr_schedule fixed to constant
        assert (
            set(frozen.params)
            == _searched(space)
            == set(params) - set(frozen.user_attrs[FIXED_PARAMS_ATTR])
        )
        fixed = frozen.user_attrs[FIXED_PARAMS_ATTR]
        assert {"optimizer", "momentum", "lr_schedule", "kernel_initializer"} <= set(fixed)
        assert not set(fixed) & set(frozen.params)
        assert {**fixed, **frozen.params} == params
        assert list(params) == [n for n, _ in space.dimensions if n in params]  # space order
        assert all(d.single() is False for d in frozen.distributions.values())
        assert space.check_params(params, ("params",)) == []


def test_inactive_fixed_values_are_left_out() -> None:
    """momentum is fixed by default, but only used (and recorded) with optimizer momentum."""
    space = SearchSpace.parse(None, {"optimizer": "adam"})
    trial = optuna.create_study().ask()
    params = suggest(trial, space)
    assert "momentum" not in params
    assert "momentum" not in trial.user_attrs[FIXED_PARAMS_ATTR]
    assert trial.user_attrs[FIXED_PARAMS_ATTR]["optimizer"] == "adam"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_a_searched_condition_records_the_fixed_values_it_activates(optimizer: str) -> None:
    space = SearchSpace.parse({"optimizer": {"choices": ["sgd", "momentum"]}}, None)
    study = optuna.create_study()
    study.enqueue_trial({"optimizer": optimizer})
    trial = study.ask()
    params = suggest(trial, space)
    assert trial.params["optimizer"] == optimizer
    assert ("momentum" in trial.user_attrs[FIXED_PARAMS_ATTR]) == (optimizer == "momentum")
    assert ("momentum" in params) == (optimizer == "momentum")


def test_a_space_with_nothing_searched_suggests_nothing() -> None:
    everything = SearchSpace.parse(None, None).sane_params()
    space = SearchSpace.parse({}, everything)
    trial = optuna.create_study().ask()
    assert suggest(trial, space) == everything
    assert trial.params == {}
    assert trial.user_attrs[FIXED_PARAMS_ATTR] == everything


def test_an_enqueued_full_configuration_comes_back_whole() -> None:
    """The service re-queues a lost trial with its whole configuration, fixed values too."""
    space = SearchSpace.parse({"dropout_rate": {"low": 0.0, "high": 0.5}}, {"optimizer": "sgd"})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    first = suggest(study.ask(), space)
    study.enqueue_trial(first)
    trial = study.ask()
    assert suggest(trial, space) == first
    assert trial.params == {k: v for k, v in first.items() if k in _searched(space)}
