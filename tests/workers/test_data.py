"""The digits split: fixed, stratified, standardised on the training split only."""

from __future__ import annotations

import numpy as np
import pytest

from workers.data import DatasetUnavailable, load


def test_split_is_fixed_stratified_and_disjoint() -> None:
    a, b = load("digits"), load("digits")
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
    n = len(a.y_train) + len(a.y_val) + len(a.y_test)
    assert n == 1797
    assert len(a.y_val) == pytest.approx(0.15 * n, abs=2)
    assert len(a.y_test) == pytest.approx(0.15 * n, abs=2)
    for y in (a.y_train, a.y_val, a.y_test):  # every class in every split, in proportion
        share = np.bincount(y, minlength=10) / len(y)
        assert np.all(np.abs(share - 0.1) < 0.02)
    rows = {tuple(r) for r in a.x_train}
    assert not any(tuple(r) in rows for r in a.x_test)


def test_standardised_with_training_statistics_only() -> None:
    d = load("digits")
    varying = d.x_train.std(axis=0) > 0
    assert np.allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(d.x_train.std(axis=0)[varying], 1, atol=1e-4)
    # Validation data is scaled with the training mean, so its own mean is not exactly 0.
    assert not np.allclose(d.x_val.mean(axis=0)[varying], 0, atol=1e-3)
    assert d.x_train.dtype == np.float32


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetUnavailable, match="dataset unavailable: 'nope'"):
        load("nope")
