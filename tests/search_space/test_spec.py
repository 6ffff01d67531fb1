"""The search-space spec: what it accepts, what it refuses and how it says so."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search_space import (
    BRIEF_PARAMS,
    PARAMS,
    Choices,
    Fixed,
    FloatRange,
    SearchSpace,
    SpaceError,
)
from search_space.optuna_space import suggest


def test_defaults_search_the_brief_parameters_over_documented_ranges() -> None:
    space = SearchSpace.parse(None, None)
    assert space["learning_rate"] == FloatRange(1e-4, 1e-1, log=True)
    assert space["dropout_rate"] == FloatRange(0.0, 0.5)
    assert space["lr_decay_rate"] == FloatRange(0.9, 0.999)
    assert space["optimizer"] == Choices(
        ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adadelta")
    )
    assert space["lr_schedule"] == Choices(("constant", "exponential", "plateau"))
    assert isinstance(space["kernel_initializer"], Choices)
    for name in BRIEF_PARAMS:
        assert not isinstance(space[name], Fixed), name
    # The others keep a fixed documented default.
    assert space["activation"] == Fixed("relu")
    assert space["batch_norm"] == Fixed(False)
    assert space["momentum"] == Fixed(0.9)


def test_the_issue_example_narrows_restricts_and_fixes() -> None:
    space = SearchSpace.parse(
        {
            "learning_rate": {"low": 0.001, "high": 0.01, "log": True},
            "optimizer": {"choices": ["adam", "rmsprop"]},
        },
        {"dropout_rate": 0.2},
    )
    assert space["learning_rate"] == FloatRange(0.001, 0.01, log=True)
    assert space["optimizer"] == Choices(("adam", "rmsprop"))
    assert space["dropout_rate"] == Fixed(0.2)


def test_json_round_trip() -> None:
    space = SearchSpace.parse(
        {
            "learning_rate": {"low": 0.001, "high": 0.01, "log": True},
            "dropout_rate": {"low": 0.0, "high": 0.4, "step": 0.1},
            "batch_size": {"choices": [32, 64]},
        },
        {"lr_schedule": "constant", "clipnorm": 1.0},
    )
    assert SearchSpace.parse(**space.to_json()) == space
    # lr_decay_rate can never be active with a constant schedule, so it is not stored.
    assert "lr_decay_rate" not in space.to_json()["search_space"]


BAD: list[tuple[dict[str, Any] | None, dict[str, Any] | None, str, str]] = [
    # (search_space, fixed, field, words the message must contain)
    (
        {"learn_rate": {"low": 0.1}},
        None,
        "search_space.learn_rate",
        "is not a known parameter (known: learning_rate",
    ),
    (
        {"learning_rate": {"low": 0.1, "high": 0.01}},
        None,
        "search_space.learning_rate.low",
        "must be <= high (0.01), got 0.1",
    ),
    (
        {"learning_rate": {"low": 0, "high": 0.01, "log": True}},
        None,
        "search_space.learning_rate.low",
        "must be > 0",
    ),
    (
        {"l2": {"low": 0.0, "high": 0.01, "log": True}},
        None,
        "search_space.l2.low",
        "must be > 0 when log is true, got 0.0",
    ),
    (
        {"optimizer": {"choices": []}},
        None,
        "search_space.optimizer.choices",
        "must be a non-empty list of one of 'sgd', 'momentum'",
    ),
    (
        {"optimizer": {"choices": ["adam", "lion"]}},
        None,
        "search_space.optimizer.choices.1",
        "must be one of 'sgd', 'momentum', 'adagrad', 'rmsprop', 'adam', 'adadelta', got 'lion'",
    ),
    (
        {"dropout_rate": {"low": 0.1, "high": 1.0}},
        None,
        "search_space.dropout_rate.high",
        "must be < 1 (a number in [0, 1)), got 1.0",
    ),
    (
        None,
        {"dropout_rate": 1.5},
        "fixed.dropout_rate",
        "must be < 1 (a number in [0, 1)), got 1.5",
    ),
    (None, {"batch_norm": "yes"}, "fixed.batch_norm", "must be one of true, false, got 'yes'"),
    (None, {"hidden_layers": 2.5}, "fixed.hidden_layers", "must be an integer"),
    (None, {"learning_rate": "fast"}, "fixed.learning_rate", "must be a finite number"),
    (
        {"learning_rate": {"low": 0.001, "lo": 0.1}},
        None,
        "search_space.learning_rate.lo",
        "is not a range field (allowed: low, high, log, step)",
    ),
    (
        {"learning_rate": [0.001, 0.1]},
        None,
        "search_space.learning_rate",
        'must be an object like {"low": .., "high": ..}',
    ),
    (
        {"dropout_rate": {"low": 0.0, "high": 0.5}},
        {"dropout_rate": 0.2},
        "fixed.dropout_rate",
        "is also in search_space",
    ),
    (
        {"momentum": {"low": 0.5, "high": 0.9}},
        {"optimizer": "adam"},
        "search_space.momentum",
        "is only used when optimizer is 'momentum'",
    ),
    (
        {"hidden_layers": {"low": 1, "high": 3, "step": 0.5}},
        None,
        "search_space.hidden_layers.step",
        "must be a positive integer",
    ),
]


@pytest.mark.parametrize(
    ("searched", "fixed", "field", "words"), BAD, ids=[case[2] for case in BAD]
)
def test_invalid_specs_name_field_value_and_allowed(
    searched: dict[str, Any] | None, fixed: dict[str, Any] | None, field: str, words: str
) -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace.parse(searched, fixed)
    fields = [p.field for p in info.value.problems]
    assert field in fields
    problem = info.value.problems[fields.index(field)]
    assert words in str(problem), str(problem)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace.parse(
            {"learning_rate": {"low": -1}, "optimizer": {"choices": []}}, {"dropout_rate": 2}
        )
    assert {p.field for p in info.value.problems} == {
        "search_space.learning_rate.low",
        "search_space.optimizer.choices",
        "fixed.dropout_rate",
    }


def _sample(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, space))
        study.tell(trial, 0.0)
    return out


def test_inactive_parameters_are_not_sampled() -> None:
    samples = _sample(SearchSpace.parse(None, None), 60)
    for params in samples:
        assert ("momentum" in params) == (params["optimizer"] == "momentum")
        assert ("lr_decay_rate" in params) == (params["lr_schedule"] == "exponential")
        assert set(BRIEF_PARAMS) - {"lr_decay_rate"} <= set(params)
    assert any("momentum" in p for p in samples)
    assert any("lr_decay_rate" in p for p in samples)


def test_sampled_values_stay_in_the_spec() -> None:
    space = SearchSpace.parse(
        {
            "learning_rate": {"low": 0.001, "high": 0.01, "log": True},
            "optimizer": {"choices": ["adam", "rmsprop"]},
            "hidden_layers": {"low": 1, "high": 3},
        },
        {"dropout_rate": 0.2},
    )
    for params in _sample(space, 30):
        assert 0.001 <= params["learning_rate"] <= 0.01
        assert params["optimizer"] in ("adam", "rmsprop")
        assert params["hidden_layers"] in (1, 2, 3)
        assert params["dropout_rate"] == 0.2  # fixed values are in every trial's params


def test_every_documented_parameter_has_a_usable_default() -> None:
    space = SearchSpace.parse(None, None)
    assert [name for name, _ in space.dimensions] == [p.name for p in PARAMS]


@pytest.mark.parametrize(
    "searched",
    [
        {"hidden_layers": {"low": 1, "high": 4, "log": True}},
        {"hidden_layers": {"low": 1, "high": 4, "log": True, "step": 1}},
        {"hidden_layers": {"low": 1, "high": 5, "step": 2}},
        {"dropout_rate": {"low": 0.0, "high": 0.4, "step": 0.1}},
        {"clipnorm": {"choices": [None, 1.0]}, "batch_norm": {"choices": [True, False]}},
    ],
)
def test_every_accepted_space_round_trips_and_samples(searched: dict[str, Any]) -> None:
    space = SearchSpace.parse(searched, None)
    again = SearchSpace.parse(**space.to_json())
    assert again == space
    assert len(_sample(again, 5)) == 5


@pytest.mark.parametrize(
    ("searched", "fixed", "field"),
    [
        ({"learning_rate": {"low": 10**400}}, None, "search_space.learning_rate.low"),
        ({"hidden_layers": {"low": 1, "high": 10**400}}, None, "search_space.hidden_layers.high"),
        (
            {"dropout_rate": {"low": 0.0, "high": 0.4, "step": 10**400}},
            None,
            "search_space.dropout_rate.step",
        ),
        (None, {"batch_size": 10**400}, "fixed.batch_size"),
        (None, {"clipnorm": 10**400}, "fixed.clipnorm"),
        (
            {"hidden_layers": {"low": 1, "high": 4, "log": True, "step": 2}},
            None,
            "search_space.hidden_layers.step",
        ),
        (
            {"hidden_layers": {"low": 1, "high": 4, "step": 2}},
            None,
            "search_space.hidden_layers.high",
        ),
        (
            {"dropout_rate": {"low": 0.0, "high": 0.45, "step": 0.1}},
            None,
            "search_space.dropout_rate.high",
        ),
    ],
)
def test_huge_or_impossible_numbers_are_refused_not_crashed_on(
    searched: dict[str, Any] | None, fixed: dict[str, Any] | None, field: str
) -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace.parse(searched, fixed)
    assert field in [p.field for p in info.value.problems]


def test_a_cnn_space_round_trips_without_mlp_parameters() -> None:
    space = SearchSpace.parse({"dropout_rate": {"low": 0.1, "high": 0.3}}, None, family="cnn")
    stored = space.to_json()
    assert "hidden_layers" not in stored["fixed"] and "hidden_units" not in stored["fixed"]
    assert SearchSpace.parse(**stored, family="cnn") == space
    assert all("hidden_units" not in p for p in _sample(space, 3))


def test_mlp_only_parameters_are_refused_for_a_cnn() -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace.parse({"hidden_layers": {"low": 1, "high": 3}}, None, family="cnn")
    assert str(info.value.problems[0]).startswith(
        "search_space.hidden_layers applies to the model families mlp only, not cnn"
    )
