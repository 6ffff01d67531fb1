"""Model sizes computed without Keras agree with the models Keras builds."""

from __future__ import annotations

import itertools
from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_space import SearchSpace, keras_builder, max_param_count, param_count, size
from search_space.keras_builder import build_model
from search_space.optuna_space import suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = settings(max_examples=25, deadline=None)


def _sample(space: SearchSpace, seed: int) -> dict[str, Any]:
    """One configuration of ``space``, as a study's trial would get it."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return suggest(study.ask(), space)


def _keras_count(
    params: dict[str, Any],
    family: str,
    n_features: int,
    n_outputs: int,
    image_shape: tuple[int, int, int] | None = None,
) -> int:
    model = build_model(
        params, n_features=n_features, n_outputs=n_outputs, family=family, image_shape=image_shape
    )
    count: int = model.count_params()
    return count


def test_the_builder_constants_are_mirrored() -> None:
    assert size.CNN_FILTERS == keras_builder.CNN_FILTERS
    assert size.CNN_DENSE_UNITS == keras_builder.CNN_DENSE_UNITS


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    hidden_units=st.integers(1, 512),
    hidden_layers=st.integers(1, 5),
    batch_norm=st.booleans(),
    n_features=st.sampled_from([1, 4, 13, 64]),
    n_outputs=st.sampled_from([1, 2, 10]),
)
def test_mlp_count_matches_keras(
    seed: int,
    hidden_units: int,
    hidden_layers: int,
    batch_norm: bool,
    n_features: int,
    n_outputs: int,
) -> None:
    params = {
        **_sample(SearchSpace.parse(None, None), seed),
        "hidden_units": hidden_units,
        "hidden_layers": hidden_layers,
        "batch_norm": batch_norm,
    }
    assert param_count(
        params, family="mlp", n_features=n_features, n_outputs=n_outputs
    ) == _keras_count(params, "mlp", n_features, n_outputs)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    batch_norm=st.booleans(),
    image_shape=st.sampled_from([(8, 8, 1), (28, 28, 1)]),
)
def test_cnn_count_matches_keras(
    seed: int, batch_norm: bool, image_shape: tuple[int, int, int]
) -> None:
    params = {
        **_sample(SearchSpace.parse(None, None, family="cnn"), seed),
        "batch_norm": batch_norm,
    }
    n_features = image_shape[0] * image_shape[1] * image_shape[2]
    assert param_count(
        params, family="cnn", n_features=n_features, n_outputs=10, image_shape=image_shape
    ) == _keras_count(params, "cnn", n_features, 10, image_shape)


def test_missing_parameters_take_their_documented_defaults() -> None:
    # hidden_layers 2, hidden_units 128, no batch norm: 4*128+128 + 128*64+64 + 64*3+3
    assert param_count({}, family="mlp", n_features=4, n_outputs=3) == 9091
    assert param_count(
        {"dropout_rate": 0.0, "kernel_initializer": "orthogonal"},
        family="mlp",
        n_features=4,
        n_outputs=3,
    ) == _keras_count({"dropout_rate": 0.0, "kernel_initializer": "orthogonal"}, "mlp", 4, 3)


def test_unknown_families_and_missing_images_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        param_count({}, family="resnet", n_features=4, n_outputs=3)
    with pytest.raises(ValueError, match="needs image data"):
        param_count({}, family="cnn", n_features=64, n_outputs=3)
    with pytest.raises(ValueError, match="does not hold"):
        param_count({}, family="cnn", n_features=63, n_outputs=3, image_shape=(8, 8, 1))
    assert (
        max_param_count(SearchSpace.parse(None, None, family="resnet"), n_features=4, n_outputs=3)
        is None
    )


SMALL = {
    "hidden_layers": {"low": 1, "high": 3},
    "hidden_units": {"choices": [24, 64, 40]},
    "batch_norm": {"choices": [False, True]},
}


@pytest.mark.parametrize(
    ("n_outputs", "largest"),
    [
        (10, (3, 64, True)),
        (300, (1, 64, True)),  # many outputs: a deeper net narrows the logits' input
    ],
)
def test_max_count_is_the_largest_model_keras_builds(
    n_outputs: int, largest: tuple[int, int, bool]
) -> None:
    space = SearchSpace.parse(SMALL, {"dropout_rate": 0.1})
    counts = {
        (layers, units, bn): _keras_count(
            {
                **space.sane_params(),
                "hidden_layers": layers,
                "hidden_units": units,
                "batch_norm": bn,
            },
            "mlp",
            16,
            n_outputs,
        )
        for layers, units, bn in itertools.product((1, 2, 3), (24, 64, 40), (False, True))
    }
    biggest = max_param_count(space, n_features=16, n_outputs=n_outputs)
    assert biggest == max(counts.values()) == counts[largest]
    for seed in range(10):
        params = _sample(space, seed)
        assert param_count(params, family="mlp", n_features=16, n_outputs=n_outputs) <= biggest


def test_max_count_of_a_cnn_space() -> None:
    space = SearchSpace.parse({"batch_norm": {"choices": [False, True]}}, None, family="cnn")
    biggest = _keras_count({**space.sane_params(), "batch_norm": True}, "cnn", 64, 10, (8, 8, 1))
    assert max_param_count(space, n_features=64, n_outputs=10, image_shape=(8, 8, 1)) == biggest
    fixed = SearchSpace.parse(None, None, family="cnn")  # batch_norm fixed False
    assert (
        max_param_count(fixed, n_features=64, n_outputs=10, image_shape=(8, 8, 1))
        == _keras_count(fixed.sane_params(), "cnn", 64, 10, (8, 8, 1))
        < biggest
    )


def test_max_count_of_fixed_values_is_their_count() -> None:
    space = SearchSpace.parse(None, {"hidden_layers": 3, "hidden_units": 100})
    assert max_param_count(space, n_features=8, n_outputs=2) == param_count(
        {"hidden_layers": 3, "hidden_units": 100}, family="mlp", n_features=8, n_outputs=2
    )
