"""The built-in data sets, as facts both the service (to validate a study) and the workers
(to load it) agree on. Loading lives in ``workers.data``; this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: Task
    n_features: int
    n_classes: int | None
    image_shape: tuple[int, int, int] | None
    source: str


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        task="classification",
        n_features=64,
        n_classes=10,
        image_shape=(8, 8, 1),
        source="scikit-learn load_digits: 1,797 8x8 images of handwritten digits",
    ),
}

METRICS: dict[str, str] = {"val_accuracy": "maximize", "val_loss": "minimize"}
"""Objective metrics and the direction each implies."""

MODEL_FAMILIES = ("mlp",)
