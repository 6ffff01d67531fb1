"""Properties of the spec parser (the issue: "whatever it accepts builds a model; whatever
it refuses gets a 422 naming a field"), over generated ``search_space`` and ``fixed``
objects: valid ranges and choices, out-of-bounds numbers, wrong types, unknown names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from search_space import (
    MODEL_FAMILIES,
    PARAMS,
    PARAMS_BY_NAME,
    ParamDef,
    SearchSpace,
    SpaceError,
    max_param_count,
)
from search_space.keras_builder import build_model, build_optimizer, schedule_callbacks
from search_space.optuna_space import suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_FEATURES, N_OUTPUTS, IMAGE_SHAPE = 64, 10, (8, 8, 1)
MAX_BUILT = 300_000
"""Accepted spaces whose largest model is bigger are checked but not built (too slow)."""

KNOWN = tuple(PARAMS_BY_NAME)
HUGE_INTS = st.sampled_from([10**400, -(10**400), 2**63, 2**64 + 1, 10**20])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(),  # (nan and inf too)
    st.text(max_size=8),
    st.sampled_from(["adam", "relu", "zeros", "true", "0.1", ""]),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
unknown_names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["learn_rate", "lr", "units", "Optimizer", "low"]),
).filter(lambda name: name not in PARAMS_BY_NAME)


def _cap(p: ParamDef) -> tuple[float, float]:
    """The bounds of ``p``, capped for the size parameters so accepted models stay small."""
    assert p.bounds is not None
    high = {"hidden_units": 256, "hidden_layers": 4}.get(p.name, p.bounds.high)
    return p.bounds.low, high


def _valid_ints(p: ParamDef, scale: int = 1) -> tuple[int, int]:
    """The first and last ``n`` for which ``n / scale`` is a valid (capped) value of ``p``."""
    assert p.bounds is not None
    low, high = (v * scale for v in _cap(p))
    first = math.floor(low) + 1 if not p.bounds.low_inclusive else math.ceil(low)
    last = math.ceil(high) - 1 if not p.bounds.high_inclusive else math.floor(high)
    return first, last


def valid_value(p: ParamDef) -> st.SearchStrategy[Any]:
    """A value of ``p`` within its bounds (or allowed names)."""
    if p.allowed is not None:
        return st.sampled_from(p.allowed)
    assert p.bounds is not None
    low, high = _cap(p)
    ints = st.integers(*_valid_ints(p))
    if p.kind == "int" or p.element == "int":
        return ints
    floats = st.floats(
        low, high, exclude_min=not p.bounds.low_inclusive, exclude_max=not p.bounds.high_inclusive
    )
    if p.element == "float_or_none":
        return st.none() | floats | ints
    return floats | ints


def out_of_bounds(p: ParamDef) -> st.SearchStrategy[Any]:
    """A number just or far outside ``p``'s bounds (or a number where a name is wanted)."""
    if p.bounds is None:
        return st.integers(-2, 2) | st.floats(-1, 1)
    b = p.bounds
    edges = [
        b.low - 1,
        b.high + 1,
        -(10**400),
        10**400,
        math.nextafter(b.low, -math.inf),
        math.nextafter(b.high, math.inf),
    ]
    edges += [b.low] if not b.low_inclusive else []
    edges += [b.high] if not b.high_inclusive else []
    return (
        st.sampled_from(edges)
        | st.floats(max_value=b.low, exclude_max=b.low_inclusive)
        | st.floats(min_value=b.high, exclude_min=b.high_inclusive)
    )


@st.composite
def valid_dimension(draw: st.DrawFn, p: ParamDef) -> dict[str, Any]:
    """A ``search_space`` entry for ``p`` that the parser must accept."""
    if p.kind == "categorical":
        return {"choices": draw(st.lists(valid_value(p), min_size=1, max_size=4, unique_by=repr))}
    low, high = sorted(draw(st.lists(valid_value(p), min_size=2, max_size=2)))
    out: dict[str, Any] = {"low": low, "high": high}
    if low > 0 and draw(st.booleans()):
        out["log"] = True
        if p.kind == "int" and draw(st.booleans()):
            out["step"] = 1
    elif draw(st.booleans()):  # a stepped range, as a person writes it (in decimals)
        scale = 1 if p.kind == "int" else 1000
        first, last = _valid_ints(p, scale)
        low_n = draw(st.integers(first, last))
        step_n = draw(st.integers(1, max(1, last - low_n)))
        high_n = low_n + step_n * draw(st.integers(0, (last - low_n) // step_n))
        out = {"low": low_n, "high": high_n, "step": step_n}
        if scale > 1:
            out = {key: n / scale for key, n in out.items()}
    if "step" not in out and draw(st.booleans()):  # leave one end to the default range
        d_low, d_high, _ = p.default_range
        if d_low <= out["high"] and (d_low > 0 or "log" not in out):
            del out["low"]
        elif out["low"] <= d_high:
            del out["high"]
    return out


def random_dimension(p: ParamDef) -> st.SearchStrategy[Any]:
    """A ``search_space`` entry for ``p``: valid, half valid, or nonsense."""
    number = valid_value(p) | out_of_bounds(p) | junk
    ranges = st.fixed_dictionaries(
        {},
        optional={
            "low": number,
            "high": number,
            "log": st.booleans() | junk,
            "step": number | junk | st.just(5e-324),
            "lo": junk,
        },
    )
    choices = st.fixed_dictionaries(
        {},
        optional={
            "choices": st.lists(valid_value(p) | out_of_bounds(p) | junk, max_size=4) | junk,
            "extra": junk,
        },
    )
    return valid_dimension(p) | ranges | choices | junk


def random_fixed(p: ParamDef) -> st.SearchStrategy[Any]:
    return valid_value(p) | out_of_bounds(p) | junk


def section(value: Any) -> st.SearchStrategy[Any]:
    """A ``search_space`` or ``fixed`` object: mostly known names, some unknown, sometimes
    not an object at all."""
    name = st.sampled_from(KNOWN) | st.sampled_from(KNOWN) | st.sampled_from(KNOWN) | unknown_names
    entry = name.flatmap(
        lambda n: st.tuples(st.just(n), value(PARAMS_BY_NAME[n]) if n in PARAMS_BY_NAME else junk)
    )
    objects = st.lists(entry, max_size=5, unique_by=lambda e: e[0]).map(dict)
    return st.none() | objects | objects | objects | junk


@st.composite
def valid_spec(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(search_space, fixed, family)`` that the parser must accept: each parameter of the
    family default, searched or fixed, and no searched parameter whose condition the spec
    excludes."""
    family = draw(st.sampled_from(MODEL_FAMILIES))
    searched: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for p in PARAMS:
        if not p.applies_to(family):
            continue
        where = draw(st.sampled_from(("default", "search", "fixed")))
        if where == "search":
            searched[p.name] = draw(valid_dimension(p))
        elif where == "fixed":
            fixed[p.name] = draw(valid_value(p))
    for name in list(searched):
        cond = PARAMS_BY_NAME[name].condition
        if cond is None:
            continue
        if (cond.param in fixed and fixed[cond.param] != cond.value) or (
            cond.param in searched and cond.value not in searched[cond.param]["choices"]
        ):
            del searched[name]
    return searched, fixed, family


def _sample(space: SearchSpace, seed: int) -> dict[str, Any]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    # (pytest turns warnings into errors: Optuna's "high is not divisible by step" would
    # fail here, so the parser must only accept steps Optuna takes as they are.)
    return suggest(study.ask(), space)


def _check_accepted(space: SearchSpace, seed: int) -> None:
    """The sanity configuration and a sampled one are valid for the space and build a
    model that predicts, with its optimizer and schedule."""
    family = space.family
    image_shape = IMAGE_SHAPE if family == "cnn" else None
    biggest = max_param_count(
        space, n_features=N_FEATURES, n_outputs=N_OUTPUTS, image_shape=image_shape
    )
    assert biggest is not None
    for params in (space.sane_params(), _sample(space, seed)):
        assert space.check_params(params, ("p",)) == [], params
        if biggest > MAX_BUILT:
            event("accepted, too big to build")
            continue
        model = build_model(
            params,
            n_features=N_FEATURES,
            n_outputs=N_OUTPUTS,
            family=family,
            image_shape=image_shape,
            seed=0,
        )
        build_optimizer(params)
        schedule_callbacks(params)
        assert model.predict(np.zeros((2, N_FEATURES)), verbose=0).shape == (2, N_OUTPUTS)


@pytest.mark.slow  # builds a Keras model for each example
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    search_space=section(random_dimension),
    fixed=section(random_fixed),
    family=st.sampled_from(MODEL_FAMILIES),
    seed=st.integers(0, 2**32 - 1),
)
def test_parse_accepts_a_buildable_space_or_refuses_naming_fields(
    search_space: Any, fixed: Any, family: str, seed: int
) -> None:
    try:
        space = SearchSpace.parse(search_space, fixed, family=family)
    except SpaceError as error:
        event("refused")
        _check_refusal(error, search_space, fixed)
        return
    event("accepted")
    _check_accepted(space, seed)


def _check_refusal(error: SpaceError, search_space: Any, fixed: Any) -> None:
    """Every problem names a field of what was given, says what is wrong, and is in the
    error's text."""
    assert error.problems
    text = str(error)
    for problem in error.problems:
        assert isinstance(problem.loc, tuple) and problem.loc, problem
        assert problem.loc[0] in ("search_space", "fixed"), problem
        sent = search_space if problem.loc[0] == "search_space" else fixed
        if len(problem.loc) > 1:
            assert isinstance(sent, Mapping) and problem.loc[1] in sent, problem
        assert problem.msg, problem
        assert problem.field in text


@pytest.mark.slow  # builds a Keras model for each example
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=valid_spec(), seed=st.integers(0, 2**32 - 1))
def test_every_valid_spec_is_accepted_and_builds_a_model(
    spec: tuple[dict[str, Any], dict[str, Any], str], seed: int
) -> None:
    searched, fixed, family = spec
    space = SearchSpace.parse(searched, fixed, family=family)
    _check_accepted(space, seed)


# Bugs the properties above found once, kept as plain examples.


def test_sane_params_stay_in_a_stepped_range() -> None:
    space = SearchSpace.parse(
        {"lr_decay_rate": {"low": 0.1, "high": 0.7, "step": 0.2}}, {"lr_schedule": "exponential"}
    )
    params = space.sane_params()  # lr_decay_rate 0.7000000000000001 > 0.7
    assert space.check_params(params, ("p",)) == []


def test_a_tiny_step_is_refused_not_crashed_on() -> None:
    with pytest.raises(SpaceError):
        SearchSpace.parse({"dropout_rate": {"low": 0.0, "high": 0.5, "step": 5e-324}}, None)


def test_an_enormous_int_is_refused_not_crashed_on() -> None:
    with pytest.raises(SpaceError):
        SearchSpace.parse(None, {"dropout_rate": 10**5000})
