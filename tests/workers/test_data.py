"""The digits split: fixed, stratified, standardised on the training split only."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from search_space.catalog import BUILTIN_DATASETS
from search_space.splits import FOLDS, split_rows
from workers.data import DatasetUnavailable, DataSource, load


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


def test_a_reevaluation_fold_cuts_train_and_validation_again_and_leaves_test_alone() -> None:
    """Fold 0 is the fixed split; fold f >= 1 validates on another seventh of the training
    and validation rows (stratified), the same rows every time; the test rows never move."""
    x, y = sk_datasets.load_digits(return_X_y=True)
    fixed = split_rows(x, y, classify=True)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(split_rows(x, y, classify=True, fold=0), fixed, strict=True)
    )
    seen = {r.tobytes() for r in np.concatenate([fixed[0], fixed[2]])}
    vals = []
    for fold in range(1, FOLDS + 2):
        x_train, _, x_val, y_val, x_test, y_test = split_rows(x, y, classify=True, fold=fold)
        assert np.array_equal(x_test, fixed[4]) and np.array_equal(y_test, fixed[5])
        train, val = {r.tobytes() for r in x_train}, {r.tobytes() for r in x_val}
        assert train | val == seen and len(x_train) + len(x_val) == len(seen)
        assert len(y_val) == pytest.approx(len(seen) / FOLDS, abs=2)
        assert np.all(np.abs(np.bincount(y_val, minlength=10) / len(y_val) - 0.1) < 0.02)
        vals.append(val)
    assert len({r.tobytes() for r in fixed[2]} & vals[0]) < len(vals[0]) / 3  # other rows
    assert all(not (a & b) for i, a in enumerate(vals[:FOLDS]) for b in vals[i + 1 : FOLDS])
    assert vals[FOLDS] == vals[0]  # fold FOLDS + 1 is fold 1 again
    # The standardised split follows the fold; regression folds too (unstratified).
    assert len(
        DataSource(keras_dir=Path("."), cache_dir=Path("."), allow_downloads=False)
        .load(BUILTIN_DATASETS["digits"], 3)
        .y_val
    ) == len(split_rows(x, y, classify=True, fold=3)[3])
    xd, yd = sk_datasets.load_diabetes(return_X_y=True)
    assert len(split_rows(xd, yd, classify=False, fold=1)[3]) == pytest.approx(
        (len(yd) - len(split_rows(xd, yd, classify=False)[5])) / FOLDS, abs=1
    )


def test_classes_rarer_than_the_folds_are_cut_stratified_where_one_class_allows() -> None:
    """Stratifying needs a class with a row for every part: with 5 training and
    validation rows a class (fewer than ``FOLDS``), fold 1 is cut plainly, not refused;
    with one common class beside a rare one, stratified (the common class in every part)."""
    y = np.repeat([0, 1, 2], 6)
    x = np.arange(len(y) * 2, dtype=float).reshape(len(y), 2)
    fixed = split_rows(x, y, classify=True)
    assert max(np.bincount(np.concatenate([fixed[1], fixed[3]]))) < FOLDS
    _, y_train, _, y_val, _, y_test = split_rows(x, y, classify=True, fold=1)
    assert len(y_train) + len(y_val) == len(fixed[1]) + len(fixed[3]) and len(y_val) >= 2
    assert np.array_equal(y_test, fixed[5])
    y = np.array([0] * 100 + [1] * 5)
    x = np.arange(len(y), dtype=float).reshape(len(y), 1)
    fixed = split_rows(x, y, classify=True)
    zeros = int((fixed[1] == 0).sum() + (fixed[3] == 0).sum())
    for fold in range(1, FOLDS + 1):  # the 0s shared out evenly over the parts
        y_val = split_rows(x, y, classify=True, fold=fold)[3]
        assert int((y_val == 0).sum()) in (zeros // FOLDS, zeros // FOLDS + 1), fold


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


def _fake_keras_cache(root: Path) -> Path:
    """MNIST and Fashion-MNIST files in Keras's own cache formats, small and generated."""
    rng = np.random.default_rng(0)
    cache = root / "datasets"
    (cache / "fashion-mnist").mkdir(parents=True)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)

    def labels(n: int) -> np.ndarray:
        return (np.arange(n) % 10).astype(np.uint8)

    np.savez(
        cache / "mnist.npz",
        x_train=images(200),
        y_train=labels(200),
        x_test=images(50),
        y_test=labels(50),
    )
    for part, n in (("train", 200), ("t10k", 50)):
        with gzip.open(cache / "fashion-mnist" / f"{part}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\0" * 8 + labels(n).tobytes())
        with gzip.open(cache / "fashion-mnist" / f"{part}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\0" * 16 + images(n).tobytes())
    return cache


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_keras_data_sets_load_from_the_keras_cache(tmp_path: Path, name: str) -> None:
    source = DataSource(
        keras_dir=_fake_keras_cache(tmp_path), cache_dir=tmp_path, allow_downloads=False
    )
    data = source.load(BUILTIN_DATASETS[name])
    assert data.x_train.shape[1] == 784 and len(data.y_test) == 50  # Keras's own test split
    assert len(data.y_train) + len(data.y_val) == 200
    assert data.info.image_shape == (28, 28, 1)


def test_keras_data_sets_without_cache_or_download_are_unavailable(tmp_path: Path) -> None:
    source = DataSource(keras_dir=tmp_path, cache_dir=tmp_path, allow_downloads=False)
    with pytest.raises(
        DatasetUnavailable, match="dataset unavailable: mnist is not in the Keras cache"
    ):
        source.load(BUILTIN_DATASETS["mnist"])


def test_regression_targets_are_scaled_with_training_statistics() -> None:
    d = load("diabetes")
    assert d.y_train.mean() == pytest.approx(0, abs=1e-5)
    assert d.y_train.std() == pytest.approx(1, abs=1e-4)
    assert 50 < d.y_std < 100  # the target's own spread, to turn errors back into units


def test_only_absolute_errors_are_scaled_back_to_target_units() -> None:
    d = load("diabetes")
    assert d.y_std > 1
    assert d.to_target_units("mae", 0.5) == 0.5 * d.y_std
    assert d.to_target_units("val_mae", 2) == 2 * d.y_std
    assert d.to_target_units("val_loss", 0.5) == 0.5  # an MSE in scaled units stays so
    logs = {"loss": 0.25, "val_mae": 0.5, "learning_rate": np.float32(0.01), "note": "x"}
    assert d.metrics_in_target_units(logs) == {
        "loss": 0.25,
        "val_mae": 0.5 * d.y_std,
        "learning_rate": pytest.approx(0.01),
    }
    assert load("digits").to_target_units("val_accuracy", 0.9) == 0.9
