"""Uploaded data set files (CSV or NPZ) parsed and checked, once, before they are stored:
features as float32 rows x features, labels as int64 class codes or float32 targets.
Every refusal is an ``Invalid`` naming the field and the reason.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from search_space.catalog import Task
from search_space.splits import split_rows
from service.errors import Invalid, TooLarge

MIN_ROWS_PER_CLASS = 5
"""A stratified 70/15/15 split needs a few rows of every class in every part."""
MIN_ROWS_REGRESSION = 20
MIN_ROWS = 2 * MIN_ROWS_PER_CLASS
"""The fewest rows of any data set: two classes of the fewest rows each."""
MAX_CLASSES = 1000
UNPACKED_FACTOR = 8
"""An NPZ may unpack to at most this many times the upload limit (no zip bombs)."""
_MISSING = {"", "na", "nan", "null", "none", "?"}


@dataclass(frozen=True)
class Parsed:
    x: NDArray[np.float32]
    y: NDArray[Any]
    task: Task
    classes: list[Any] | None
    image_shape: tuple[int, int, int] | None
    file_format: str


def _invalid(field: str, msg: str, value: Any) -> Invalid:
    return Invalid((field,), msg, value)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _number(text: str) -> bool:
    """Whether a cell reads as a number, finite or not (``inf``, ``nan`` included)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _non_finite_label(labels: list[str]) -> None:
    for line, label in enumerate(labels, start=2):
        if _number(label) and not math.isfinite(float(label)):
            raise _invalid(
                "file",
                f"has a label that is not a finite number on line {line}; labels are "
                "finite numbers or class names",
                label,
            )


def _parse_csv(content: bytes, label_column: str | None) -> tuple[NDArray[np.float32], list[str]]:
    if not label_column:
        raise _invalid(
            "label_column",
            "is required for a CSV file: name the column that holds the labels",
            label_column,
        )
    try:
        text = content.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _invalid("file", f"is not a parseable CSV file ({exc})", None) from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise _invalid(
            "file",
            "is not a parseable CSV file: it needs a header row and at least one data row",
            f"{len(rows)} rows",
        )
    header = [h.strip() for h in rows[0]]
    number = next((h for h in header if _number(h)), None)
    if number is not None:  # a file without a header would lose its first row to it
        raise _invalid(
            "file",
            f"has no header row: its first line has the number {number} where a column "
            "name belongs; add a first line naming the columns (a column named by a number "
            "needs a letter too)",
            ",".join(header),
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise _invalid(
            "file", "has repeated column names; each column needs its own name", repeated
        )
    if len(header) < 2:
        raise _invalid("file", "has no feature columns besides the label", header)
    if label_column not in header:
        raise _invalid(
            "label_column",
            f"is not a column of the file (columns: {', '.join(header)})",
            label_column,
        )
    label_at = header.index(label_column)
    features = np.empty((len(rows) - 1, len(header) - 1), dtype=np.float32)
    labels: list[str] = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _invalid(
                "file",
                f"is not a parseable CSV file: line {i} has {len(row)} "
                f"fields, the header has {len(header)}",
                row,
            )
        col = 0
        for j, cell in enumerate(row):
            cell = cell.strip()
            if cell.lower() in _MISSING:
                raise _invalid(
                    "file",
                    f"has a missing value in column {header[j]!r} (line "
                    f"{i}); fill or drop it before uploading",
                    cell,
                )
            if j == label_at:
                labels.append(cell)
                continue
            value = _float(cell)
            if value is None:
                raise _invalid(
                    "file",
                    f"has a non-numeric feature in column {header[j]!r} "
                    f"(line {i}); features must be numbers",
                    cell,
                )
            features[i - 2, col] = value
            col += 1
    _non_finite_label(labels)
    return features, labels


def _labels(
    raw: list[str] | NDArray[Any], task: str | None
) -> tuple[NDArray[Any], Task, list[Any] | None]:
    """Class codes (and the classes) or float targets. Without an explicit task, integer
    or text labels mean classification and fractional numbers regression."""
    values = np.asarray(raw)
    numeric = np.array([_float(str(v)) for v in values.tolist()], dtype=object)
    all_numeric = all(v is not None for v in numeric)
    if task is None:
        integral = all_numeric and all(float(v).is_integer() for v in numeric)
        task = "classification" if (integral or not all_numeric) else "regression"
    if task == "regression":
        if not all_numeric:
            raise _invalid("task", "is regression, but the labels are not all numbers", task)
        return numeric.astype(np.float32), "regression", None
    if all_numeric and not all(float(v).is_integer() for v in numeric):
        example = next(v for v in numeric if not float(v).is_integer())
        raise _invalid(
            "task",
            f"is classification, but the labels are not whole numbers "
            f"(e.g. {example}); give task=regression or use class names",
            task,
        )
    keys = [int(v) if all_numeric else str(v) for v in (numeric if all_numeric else values)]
    classes = sorted(set(keys), key=lambda k: (str(type(k)), k))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[k] for k in keys], dtype=np.int64), "classification", classes


def _parse_npz(
    content: bytes, max_bytes: int
) -> tuple[NDArray[np.float32], NDArray[Any], tuple[int, int, int] | None]:
    try:
        loaded = np.load(io.BytesIO(content), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _invalid(
                "file",
                "is not an NPZ archive (a single .npy array?); save it "
                "with numpy.savez(file, x=..., y=...)",
                None,
            )
        with loaded as npz:
            archive = npz.zip
            assert archive is not None
            unpacked = sum(i.file_size for i in archive.infolist())
            if unpacked > UNPACKED_FACTOR * max_bytes:
                raise _invalid(
                    "file",
                    f"unpacks to {unpacked} bytes, more than {UNPACKED_FACTOR} x the upload limit",
                    unpacked,
                )
            names = set(npz.files)
            if not {"x", "y"} <= names:
                raise _invalid("file", "must hold arrays named x and y", sorted(names))
            x, y = npz["x"], npz["y"]
    except Invalid:
        raise
    except Exception as exc:  # zip, zlib and numpy header errors alike
        raise _invalid(
            "file", f"is not a readable NPZ file ({type(exc).__name__}: {exc})", None
        ) from exc
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y) or len(x) == 0 or 0 in x.shape:
        raise _invalid(
            "file",
            "must hold x as rows x features (or rows x H x W [x C] "
            "images, none of them empty) and y as one label per row",
            f"x {x.shape}, y {y.shape}",
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise _invalid("file", "has non-numeric features (x must be numbers)", str(x.dtype))
    if not np.all(np.isfinite(x)):
        raise _invalid("file", "has missing values (NaN or infinite) in x", None)
    image = None
    if x.ndim >= 3:
        h, w = x.shape[1], x.shape[2]
        image = (int(h), int(w), int(x.shape[3]) if x.ndim == 4 else 1)
    return x.reshape(len(x), -1).astype(np.float32), y, image


def parse_upload(
    *, filename: str, content: bytes, label_column: str | None, task: str | None, max_bytes: int
) -> Parsed:
    """Parse and check an upload.

    Raises:
        Invalid: not parseable, label column missing, non-numeric features, missing
            values, too few rows for a stratified split, or over the size limit.
    """
    if len(content) > max_bytes:
        raise TooLarge(
            ("file",),
            f"is larger than the limit of {max_bytes} bytes (HPO_MAX_UPLOAD_BYTES)",
            f"more than {max_bytes} bytes",
        )
    is_npz = content[:2] == b"PK" or content[:6] == b"\x93NUMPY"  # by content, not name
    if filename.lower().endswith(".npz") and not is_npz:
        raise _invalid(
            "file",
            "is named .npz but is not an NPZ (zip) archive; a CSV file must be named .csv, "
            "and arrays saved with numpy.savez(file, x=..., y=...)",
            filename,
        )
    if is_npz:
        x, raw_y, image = _parse_npz(content, max_bytes)
        file_format = "npz"
        y_raw: list[str] | NDArray[Any] = raw_y
    else:
        x, y_raw = _parse_csv(content, label_column)
        image, file_format = None, "csv"
    if (
        file_format == "npz"
        and np.issubdtype(raw_y.dtype, np.floating)
        and task is None
        and not np.all(np.mod(raw_y, 1) == 0)
    ):
        task = "regression"
    if (
        file_format == "npz"
        and np.issubdtype(raw_y.dtype, np.floating)
        and not np.all(np.isfinite(raw_y))
    ):
        raise _invalid("file", "has missing values (NaN or infinite) in y", None)
    if not np.all(np.isfinite(x)):
        raise _invalid("file", "has a feature value too large for a 32-bit float", None)
    if len(x) < MIN_ROWS:
        raise _invalid(
            "file",
            f"has {len(x)} data row{'s' if len(x) != 1 else ''}; a data set needs at least "
            f"{MIN_ROWS} to split into training, validation and test rows",
            len(x),
        )
    y, task_found, classes = _labels(y_raw, task)
    if task_found == "classification":
        counts = np.bincount(y)
        if len(counts) < 2 or len(counts) > MAX_CLASSES:
            raise _invalid(
                "file",
                f"must have between 2 and {MAX_CLASSES} classes for classification",
                len(counts),
            )
        rarest = int(counts.argmin())
        if counts[rarest] < MIN_ROWS_PER_CLASS:
            label = classes[rarest] if classes else rarest
            raise _invalid(
                "file",
                f"has too few rows for a stratified split: class "
                f"{label!r} has {counts[rarest]}, each class needs at least "
                f"{MIN_ROWS_PER_CLASS}",
                int(counts[rarest]),
            )
    elif len(y) < MIN_ROWS_REGRESSION:
        raise _invalid(
            "file", f"has too few rows: at least {MIN_ROWS_REGRESSION} are needed", len(y)
        )
    try:  # the workers' own split, so what is accepted here can be trained
        split_rows(x, y, classify=task_found == "classification")
    except ValueError as exc:
        raise _invalid(
            "file", f"has too few rows for a stratified 70/15/15 split ({exc})", len(y)
        ) from exc
    return Parsed(x, y, task_found, classes, image, file_format)
