"""The notes' priors (issue 17: "the priors are enqueued and valid for any accepted
space"): for every space the parser accepts, each prior passes the space's own check,
Optuna takes it as an enqueued trial without a warning (pytest makes warnings errors, so
a value outside a distribution fails here), and the trial it gives is the prior's values
with the rest sampled."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from search_space import MODEL_FAMILIES, SearchSpace, SpaceError
from search_space.optuna_space import suggest
from search_space.priors import PRIORS, priors_for
from tests.search_space.test_spec_properties import (
    random_dimension,
    random_fixed,
    section,
    valid_spec,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _check_priors(space: SearchSpace) -> int:
    priors = priors_for(space)
    assert len(priors) <= len(PRIORS)
    assert all(priors) and len({repr(sorted(p.items())) for p in priors}) == len(priors)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for prior in priors:
        assert space.check_params(prior, ("prior",)) == [], prior
        study.enqueue_trial(prior)
    for prior in priors:
        params = suggest(study.ask(), space)
        assert {k: params[k] for k in prior} == prior, (prior, params)
        assert space.check_params(params, ("p",)) == [], params
    return len(priors)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=valid_spec())
def test_priors_are_valid_and_enqueued_for_every_valid_spec(
    spec: tuple[dict[str, Any], dict[str, Any], str],
) -> None:
    searched, fixed, family = spec
    event(f"{_check_priors(SearchSpace.parse(searched, fixed, family=family))} priors")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    search_space=section(random_dimension),
    fixed=section(random_fixed),
    family=st.sampled_from(MODEL_FAMILIES),
)
def test_priors_are_valid_and_enqueued_for_every_accepted_space(
    search_space: Any, fixed: Any, family: str
) -> None:
    try:
        space = SearchSpace.parse(search_space, fixed, family=family)
    except SpaceError:
        event("refused")
        return
    event(f"{_check_priors(space)} priors")


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_the_default_space_gets_every_prior(family: str) -> None:
    space = SearchSpace.parse(None, None, family=family)
    priors = priors_for(space)
    assert len(priors) == len(PRIORS)
    assert priors[0]["optimizer"] == "adam" and priors[0]["learning_rate"] == 1e-3
    _check_priors(space)


def test_a_learning_rate_is_a_prior_only_with_its_optimizer() -> None:
    # Adam's 1e-3 is no advice for plain SGD: with sgd fixed, the rate is left to the sampler.
    space = SearchSpace.parse(
        {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}}, {"optimizer": "sgd"}
    )
    priors = priors_for(space)
    assert priors and all("learning_rate" not in p for p in priors), priors
    space = SearchSpace.parse(
        {
            "learning_rate": {"low": 1e-2, "high": 1e-1, "log": True},
            "optimizer": {"choices": ["adam", "momentum"]},
        },
        None,
    )
    # (adam's 1e-3 and 2e-3 taken into the range; momentum's 3e-2 in it)
    assert [(p["optimizer"], p["learning_rate"]) for p in priors_for(space)] == [
        ("adam", 1e-2),
        ("adam", 1e-2),
        ("momentum", 3e-2),
    ]
