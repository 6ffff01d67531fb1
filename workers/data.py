"""Data sets for training: loading, the fixed stratified split, and standardisation.

The split is fixed and seeded (``SPLIT_SEED``), so every trial of every study sees the same
train / validation / test rows. Standardisation is fitted on the training split only and
then applied to validation and test (the notes' rule: no statistics from held-out data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from search_space.catalog import BUILTIN_DATASETS, DatasetInfo

SPLIT_SEED = 20_240_611
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.15


class DatasetUnavailable(RuntimeError):
    """The data set cannot be loaded on this worker."""


@dataclass(frozen=True)
class Split:
    """Standardised arrays of one data set, ready for ``model.fit``."""

    info: DatasetInfo
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_val: NDArray[np.float32]
    y_val: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _raw(name: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        return x.astype(np.float32), y.astype(np.int64)
    raise DatasetUnavailable(f"dataset unavailable: {name!r} is not a built-in data set")


def split_and_standardise(
    info: DatasetInfo, x: NDArray[np.float32], y: NDArray[np.int64]
) -> Split:
    """Stratified train / validation / test split, then standardise with train statistics."""
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=VALIDATION_FRACTION + TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest,
        y_rest,
        test_size=TEST_FRACTION / (VALIDATION_FRACTION + TEST_FRACTION),
        stratify=y_rest,
        random_state=SPLIT_SEED,
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' border pixels) stay at zero

    def scale(a: NDArray[np.float32]) -> NDArray[np.float32]:
        return ((a - mean) / std).astype(np.float32)

    return Split(info, scale(x_train), y_train, scale(x_val), y_val, scale(x_test), y_test)


def load(name: str) -> Split:
    """Load a built-in data set, split and standardised.

    Raises:
        DatasetUnavailable: the name is unknown or the data cannot be read here.
    """
    info = BUILTIN_DATASETS.get(name)
    if info is None:
        raise DatasetUnavailable(f"dataset unavailable: {name!r} is not a built-in data set")
    x, y = _raw(name)
    return split_and_standardise(info, x, y)
