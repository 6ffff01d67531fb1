"""The fixed train / validation / test split, shared by the service (which checks at upload
that a data set can be split) and the workers (which split it). numpy and scikit-learn
only: no TensorFlow.
"""

from __future__ import annotations

from typing import Any

from numpy.typing import NDArray

SPLIT_SEED = 20_240_611
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.15

Array = NDArray[Any]


def split_rows(
    x: Array, y: Array, *, classify: bool, test: tuple[Array, Array] | None = None
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """(x_train, y_train, x_val, y_val, x_test, y_test): seeded, stratified when
    ``classify``; ``test`` is a given test split (Keras's), else 15% of the rows.

    Raises:
        ValueError: too few rows (of some class) to split this way.
    """
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
