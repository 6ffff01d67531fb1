"""The fixed train / validation / test split, shared by the service (which checks at upload
that a data set can be split) and the workers (which split it). numpy and scikit-learn
only: no TensorFlow.

Fold 0 is the fixed split every search trial trains on. Folds 1 and up are the
re-evaluation's (``service.domain.winners``): the training and validation rows joined and
cut again, seeded, into ``FOLDS`` parts (stratified for classification), of which fold
``f`` validates on part ``(f - 1) % FOLDS``. So a configuration re-evaluated on fold 1 is
judged mostly on other rows than the ones that made it look best (about a sixth of a
part comes from the fixed validation rows); the test rows stay out of every fold.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

SPLIT_SEED = 20_240_611
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.15
FOLDS = round(1 / VALIDATION_FRACTION)
"""The re-evaluation's folds cut train + validation into this many parts (7: each 12% of
the rows, near the fixed validation split's 15%)."""

Array = NDArray[Any]


def split_rows(
    x: Array,
    y: Array,
    *,
    classify: bool,
    test: tuple[Array, Array] | None = None,
    fold: int = 0,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """(x_train, y_train, x_val, y_val, x_test, y_test): seeded, stratified when
    ``classify``; ``test`` is a given test split (Keras's), else 15% of the rows;
    ``fold`` 0 the fixed split, 1 and up a re-evaluation's (the module's docstring).

    Raises:
        ValueError: too few rows (of some class) to split this way.
    """
    x_train, y_train, x_val, y_val, x_test, y_test = _fixed(x, y, classify=classify, test=test)
    if fold == 0:
        return x_train, y_train, x_val, y_val, x_test, y_test
    x_seen, y_seen = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    train_rows, val_rows = _fold_rows(y_seen, classify=classify, fold=fold)
    return (
        x_seen[train_rows],
        y_seen[train_rows],
        x_seen[val_rows],
        y_seen[val_rows],
        x_test,
        y_test,
    )


def _fold_rows(y: Array, *, classify: bool, fold: int) -> tuple[Array, Array]:
    """The training and validation rows of re-evaluation fold ``fold`` (>= 1) of the
    ``len(y)`` rows of train + validation: stratified where some class has a row for every
    part (a rarer class is then in fewer parts), else plain."""
    from sklearn.model_selection import KFold, StratifiedKFold

    stratify = classify and int(np.unique(y, return_counts=True)[1].max()) >= FOLDS
    cut = (StratifiedKFold if stratify else KFold)(FOLDS, shuffle=True, random_state=SPLIT_SEED)
    with warnings.catch_warnings():  # (scikit-learn's word on the rarer classes)
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        parts = list(cut.split(np.zeros(len(y)), y))
    train_rows, val_rows = parts[(fold - 1) % FOLDS]
    return train_rows, val_rows


def _fixed(
    x: Array, y: Array, *, classify: bool, test: tuple[Array, Array] | None
) -> tuple[Array, Array, Array, Array, Array, Array]:
    # Imported here: scikit-learn takes a second to import, and the API needs it only
    # when a data set is uploaded.
    from sklearn.model_selection import train_test_split

    if test is None:
        held_out = VALIDATION_FRACTION + TEST_FRACTION
        x_train, x_rest, y_train, y_rest = train_test_split(
            x, y, test_size=held_out, stratify=y if classify else None, random_state=SPLIT_SEED
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest,
            y_rest,
            test_size=TEST_FRACTION / held_out,
            stratify=y_rest if classify else None,
            random_state=SPLIT_SEED,
        )
    else:
        x_train, x_val, y_train, y_val = train_test_split(
            x,
            y,
            test_size=VALIDATION_FRACTION,
            stratify=y if classify else None,
            random_state=SPLIT_SEED,
        )
        x_test, y_test = test
    return x_train, y_train, x_val, y_val, x_test, y_test
