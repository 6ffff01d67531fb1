"""Data sets, metrics and model families: the facts the service (to validate a study) and
the workers (to load and train) agree on. Loading lives in ``workers.data``; this module
imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Task = Literal["classification", "regression"]
Source = Literal["sklearn", "keras", "upload"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a study needs to know of a data set. ``image_shape`` (H, W, C) is set for image
    data, which the ``cnn`` family needs; ``sha256`` identifies an uploaded file."""

    name: str
    task: Task
    n_features: int
    n_classes: int | None
    image_shape: tuple[int, int, int] | None
    source: Source
    description: str = ""
    n_rows: int | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_shape"] = list(self.image_shape) if self.image_shape else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetInfo:
        shape = data.get("image_shape")
        return cls(**{**data, "image_shape": tuple(shape) if shape else None})


def _sk(
    name: str,
    task: Task,
    n_features: int,
    n_classes: int | None,
    n_rows: int,
    description: str,
    image_shape: tuple[int, int, int] | None = None,
) -> DatasetInfo:
    return DatasetInfo(
        name, task, n_features, n_classes, image_shape, "sklearn", description, n_rows
    )


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        _sk(
            "digits",
            "classification",
            64,
            10,
            1797,
            "scikit-learn load_digits: 8x8 images of handwritten digits",
            (8, 8, 1),
        ),
        _sk("iris", "classification", 4, 3, 150, "scikit-learn load_iris: iris flowers"),
        _sk("wine", "classification", 13, 3, 178, "scikit-learn load_wine: wine cultivars"),
        _sk(
            "breast_cancer",
            "classification",
            30,
            2,
            569,
            "scikit-learn load_breast_cancer: tumour diagnosis",
        ),
        _sk(
            "diabetes",
            "regression",
            10,
            None,
            442,
            "scikit-learn load_diabetes: disease progression (regression)",
        ),
        DatasetInfo(
            "mnist",
            "classification",
            784,
            10,
            (28, 28, 1),
            "keras",
            "Keras MNIST: 28x28 handwritten digits (from the Keras cache, or "
            "downloaded where the worker may)",
            70000,
        ),
        DatasetInfo(
            "fashion_mnist",
            "classification",
            784,
            10,
            (28, 28, 1),
            "keras",
            "Keras Fashion-MNIST: 28x28 clothing images (from the Keras cache, or "
            "downloaded where the worker may)",
            70000,
        ),
    )
}

METRICS: dict[str, tuple[str, Task]] = {
    "val_accuracy": ("maximize", "classification"),
    "val_loss": ("minimize", "classification"),
    "val_mae": ("minimize", "regression"),
}
"""Objective metrics: the direction each implies and the task it belongs to (``val_loss``
is valid for both tasks)."""

DEFAULT_METRIC: dict[Task, str] = {"classification": "val_accuracy", "regression": "val_mae"}


def metric_fits(metric: str, task: Task) -> bool:
    return metric == "val_loss" or METRICS[metric][1] == task


MODEL_FAMILIES = ("mlp", "cnn")
