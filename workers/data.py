"""Data sets for training: loading, the fixed split, and standardisation.

- Built-in scikit-learn sets load from the installed package (no download).
- ``mnist`` and ``fashion_mnist`` are read from the Keras cache (``~/.keras/datasets``);
  if they are not there, Keras downloads them when the worker may download, and otherwise
  the trial fails with ``dataset unavailable: ...``. Keras's own test split is the test
  split.
- Uploaded sets are fetched from the service over HTTP once and cached by content hash.

The split is fixed and seeded (``SPLIT_SEED``), stratified for classification, so every
trial of every study sees the same rows; a re-evaluation trial's lease names another fold
of train + validation (``search_space.splits``), the test rows the same. Features are
standardised with statistics of the training split only, then applied to validation and
test; regression targets are scaled the same way (the notes' advice), and
``Split.to_target_units`` turns scaled errors into the target's units.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import datasets as sk_datasets

from search_space.catalog import BUILTIN_DATASETS, DatasetInfo
from search_space.splits import Array, split_rows
from workers.uploads import DatasetUnavailable, cached_upload

TARGET_UNIT_METRICS = frozenset({"mae"})
"""Metrics in the target's units (with their ``val_`` twins): scaled back by ``y_std``."""


@dataclass(frozen=True)
class Split:
    """Standardised arrays of one data set, ready for ``model.fit``. Features are flat
    (rows x features); image models reshape them to ``info.image_shape``."""

    info: DatasetInfo
    x_train: Array
    y_train: Array
    x_val: Array
    y_val: Array
    x_test: Array
    y_test: Array
    y_mean: float = 0.0
    y_std: float = 1.0

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def to_target_units(self, name: str, value: float) -> float:
        """A metric back in the target's units: models train on standardised regression
        targets, so an absolute error (``mae``, ``val_mae``) is scaled by ``y_std``; every
        other metric (accuracies, losses) is returned as is."""
        scaled = name.removeprefix("val_") in TARGET_UNIT_METRICS
        return float(value) * self.y_std if scaled else float(value)

    def metrics_in_target_units(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The numeric entries of ``metrics`` (Keras logs), each via ``to_target_units``."""
        return {
            k: self.to_target_units(k, float(v))
            for k, v in metrics.items()
            if isinstance(v, int | float | np.number)
        }


def _standardiser(x_train: Array) -> Callable[[Array], Array]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' border pixels) stay at zero

    def scale(a: Array) -> Array:
        return ((a - mean) / std).astype(np.float32)

    return scale


def split_and_standardise(
    info: DatasetInfo,
    x: Array,
    y: Array,
    test: tuple[Array, Array] | None = None,
    *,
    fold: int = 0,
) -> Split:
    """The split (``search_space.splits``: fold 0 the fixed one), then standardisation with
    training statistics. ``test`` is a given test split (Keras's)."""
    x = x.reshape(len(x), -1).astype(np.float32)
    classify = info.task == "classification"
    y = y.astype(np.int64) if classify else y.astype(np.float32)
    if test is not None:
        test = (test[0].reshape(len(test[0]), -1).astype(np.float32), test[1].astype(y.dtype))
    x_train, y_train, x_val, y_val, x_test, y_test = split_rows(
        x, y, classify=classify, test=test, fold=fold
    )
    scale = _standardiser(x_train)
    y_mean, y_std = 0.0, 1.0
    if not classify:
        y_mean = float(y_train.mean())
        y_std = float(y_train.std()) or 1.0
        y_train, y_val, y_test = ((a - y_mean) / y_std for a in (y_train, y_val, y_test))
    return Split(
        info, scale(x_train), y_train, scale(x_val), y_val, scale(x_test), y_test, y_mean, y_std
    )


_SKLEARN = {
    "digits": sk_datasets.load_digits,
    "iris": sk_datasets.load_iris,
    "wine": sk_datasets.load_wine,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "diabetes": sk_datasets.load_diabetes,
}


def _idx(path: Path, offset: int) -> Array:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


class DataSource:
    """Where a worker gets data from, and where it caches it."""

    def __init__(
        self,
        *,
        keras_dir: Path,
        cache_dir: Path,
        allow_downloads: bool,
        fetch: Callable[[str], bytes] | None = None,
    ) -> None:
        self.keras_dir = keras_dir
        self.cache_dir = cache_dir
        self.allow_downloads = allow_downloads
        self.fetch = fetch

    def load(self, info: DatasetInfo, fold: int = 0) -> Split:
        """Load a data set, split (``fold``: ``search_space.splits``) and standardised.

        Raises:
            DatasetUnavailable: it cannot be had here (not cached and no download, a fetch
                that failed, content that does not match its hash).
        """
        if info.source == "sklearn" and info.name in _SKLEARN:
            x, y = _SKLEARN[info.name](return_X_y=True)
            return split_and_standardise(info, x, y, fold=fold)
        if info.source == "keras":
            (x, y), test = self._keras(info.name)
            return split_and_standardise(info, x, y, test, fold=fold)
        if info.source == "upload":
            with np.load(io.BytesIO(self._uploaded(info)), allow_pickle=False) as npz:
                return split_and_standardise(info, npz["x"], npz["y"], fold=fold)
        raise DatasetUnavailable(f"dataset unavailable: {info.name!r} is not a known data set")

    def _keras(self, name: str) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
        if name == "mnist" and (self.keras_dir / "mnist.npz").exists():
            with np.load(self.keras_dir / "mnist.npz", allow_pickle=False) as f:
                return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
        folder = self.keras_dir / "fashion-mnist"
        files = [
            folder / f"{part}-{kind}-ubyte.gz"
            for part in ("train", "t10k")
            for kind in ("labels-idx1", "images-idx3")
        ]
        if name == "fashion_mnist" and all(p.exists() for p in files):
            y_train, x_train = _idx(files[0], 8), _idx(files[1], 16).reshape(-1, 28, 28)
            y_test, x_test = _idx(files[2], 8), _idx(files[3], 16).reshape(-1, 28, 28)
            return (x_train, y_train), (x_test, y_test)
        if not self.allow_downloads:
            raise DatasetUnavailable(
                f"dataset unavailable: {name} is not in the Keras cache ({self.keras_dir}) "
                "and this worker may not download (HPO_ALLOW_DOWNLOADS=false)"
            )
        import keras

        try:
            loaded: tuple[tuple[Array, Array], tuple[Array, Array]] = getattr(
                keras.datasets, name
            ).load_data()
        except Exception as exc:  # no network, a broken cache file, ...
            raise DatasetUnavailable(
                f"dataset unavailable: {name} could not be downloaded: {type(exc).__name__}: {exc}"
            ) from exc
        return loaded

    def _uploaded(self, info: DatasetInfo) -> bytes:
        return cached_upload(self.cache_dir, info, self.fetch)


def load(name: str) -> Split:
    """A built-in scikit-learn data set (tests and tools; workers use ``DataSource``)."""
    info = BUILTIN_DATASETS.get(name)
    if info is None or info.source != "sklearn":
        raise DatasetUnavailable(f"dataset unavailable: {name!r} is not a built-in data set")
    return DataSource(keras_dir=Path("."), cache_dir=Path("."), allow_downloads=False).load(info)
