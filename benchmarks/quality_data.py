"""The data sets of the quality benchmark, and the objective each implies.

A data set is a built-in scikit-learn name (``digits``, ``wine``, ...) or the path of a
CSV file (with its label column) or an NPZ file (arrays ``x`` and ``y``). A file is read
the way the service reads an upload (``service.domain.uploads.parse_upload``, the same
checks and label coding) and split the way a worker splits the NPZ the service stores
(``workers.data.split_and_standardise``, the fixed seeded split): so the peers, searching
in this process, see the very rows the service's worker sees. The service's search
uploads the file first (``POST /datasets``) under ``Dataset.name``.

numpy and scikit-learn only: nothing here loads TensorFlow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search_space.catalog import BUILTIN_DATASETS, DEFAULT_METRIC, METRICS, Task

if TYPE_CHECKING:
    from service.domain.uploads import Parsed
    from workers.data import Split

BUILTIN = tuple(name for name, info in BUILTIN_DATASETS.items() if info.source == "sklearn")
"""The built-in data sets a search can load without a download."""


@dataclass(frozen=True)
class Dataset:
    """One data set of the benchmark: ``name`` in the results (and the service's data set
    name), ``path`` of its file (None for a built-in), the CSV ``label`` column, and the
    file's ``task`` when given (else the service's rule: whole-number or text labels
    classify, fractional ones regress)."""

    name: str
    path: str | None = None
    label: str | None = None
    task: Task | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "path": self.path, "label": self.label, "task": self.task}


@dataclass(frozen=True)
class Objective:
    """What a search optimises on a data set: the service's default metric for the task
    (``val_accuracy`` for classification, ``val_mae`` for regression) and its direction;
    the test split is scored on the same metric without ``val_``."""

    task: Task
    metric: str
    direction: str

    @classmethod
    def of(cls, task: Task) -> Objective:
        metric = DEFAULT_METRIC[task]
        return cls(task, metric, METRICS[metric][0])

    @property
    def test_metric(self) -> str:
        return self.metric.removeprefix("val_")

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a < b if self.minimize else a > b


def _upload_name(path: Path) -> str:
    """A service data set name from the file's name (letters, digits, ``_ . -``), never a
    built-in's (the service refuses those)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_.-") or "dataset"
    if not stem[0].isalnum():
        stem = "d" + stem
    return f"{stem}-upload" if stem in BUILTIN_DATASETS else stem[:100]


def resolve(spec: str, label: str | None = None, task: Task | None = None) -> Dataset:
    """A ``--dataset`` value: a built-in name, or an existing CSV or NPZ file (``label``
    and ``task`` apply to files only).

    Raises:
        ValueError: neither, or a CSV without ``label``.
    """
    if spec in BUILTIN:
        return Dataset(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(
            f"dataset {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file"
        )
    if path.suffix.lower() != ".npz" and not label:
        raise ValueError(f"dataset {spec!r}: a CSV file needs --label COLUMN (its labels)")
    return Dataset(_upload_name(path), str(path.resolve()), label, task)


def max_upload_bytes() -> int:
    """The service's default upload limit, which the in-process reading applies too."""
    from service.config import Settings

    limit: int = Settings.model_fields["max_upload_bytes"].default
    return limit


def _parse(dataset: Dataset) -> Parsed:
    """The file read as the service reads an upload.

    Raises:
        service.errors.Invalid: a file the service would refuse (the reason named).
    """
    from service.domain.uploads import parse_upload

    assert dataset.path is not None
    path = Path(dataset.path)
    return parse_upload(
        filename=path.name,
        content=path.read_bytes(),
        label_column=dataset.label,
        task=dataset.task,
        max_bytes=max_upload_bytes(),
    )


def task(dataset: Dataset) -> Task:
    """The data set's task (a file is read and checked: a bad one fails here, early)."""
    if dataset.path is None:
        return BUILTIN_DATASETS[dataset.name].task
    return _parse(dataset).task


def load(dataset: Dataset) -> Split:
    """The data set split and standardised, as a worker of the service would have it."""
    from workers.data import load as load_builtin
    from workers.data import split_and_standardise

    if dataset.path is None:
        return load_builtin(dataset.name)
    import hashlib
    import io

    import numpy as np

    from search_space.catalog import DatasetInfo

    path = Path(dataset.path)
    parsed = _parse(dataset)
    stored = io.BytesIO()  # what the service stores, and its worker reads back
    np.savez_compressed(stored, x=parsed.x, y=parsed.y)
    info = DatasetInfo(
        name=dataset.name,
        task=parsed.task,
        n_features=int(parsed.x.shape[1]),
        n_classes=len(parsed.classes) if parsed.classes is not None else None,
        image_shape=parsed.image_shape,
        source="upload",
        description=f"{parsed.file_format.upper()} file {path.name}",
        n_rows=len(parsed.y),
        sha256=hashlib.sha256(stored.getvalue()).hexdigest(),
    )
    stored.seek(0)
    with np.load(stored, allow_pickle=False) as npz:
        return split_and_standardise(info, npz["x"], npz["y"])
