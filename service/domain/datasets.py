"""Data sets: the built-ins and the users' own uploads (CSV or NPZ).

An upload is parsed and checked once (``service.domain.uploads``) and stored as a
normalised NPZ (``x``: float32 rows x features, ``y``: int64 class codes or float32
targets) with its SHA-256, which workers use to cache it.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from search_space.catalog import BUILTIN_DATASETS, DatasetInfo
from service.domain.uploads import Parsed, parse_upload
from service.errors import Conflict, NotFound
from service.storage.runtime import Runtime
from service.storage.tables import DatasetRow, LeaseRow, StudyRow, utcnow

__all__ = [
    "Parsed",
    "content",
    "create",
    "list_all",
    "parse_upload",
    "reported_unavailable",
    "resolve",
]


def _normalised(parsed: Parsed) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, x=parsed.x, y=parsed.y)
    return out.getvalue()


def _info(row: DatasetRow) -> DatasetInfo:
    shape = row.image_shape
    return DatasetInfo(
        name=row.name,
        task="regression" if row.task == "regression" else "classification",
        n_features=row.n_features,
        n_classes=row.n_classes,
        image_shape=(shape[0], shape[1], shape[2]) if shape else None,
        source="upload",
        description=f"uploaded {row.file_format.upper()}, {row.n_rows} rows",
        n_rows=row.n_rows,
        sha256=row.sha256,
    )


def create(rt: Runtime, *, name: str, parsed: Parsed) -> DatasetInfo:
    if name in BUILTIN_DATASETS:
        raise Conflict(f"{name!r} is a built-in data set; choose another name")
    content = _normalised(parsed)
    row = DatasetRow(
        name=name,
        task=parsed.task,
        n_rows=len(parsed.y),
        n_features=int(parsed.x.shape[1]),
        n_classes=len(parsed.classes) if parsed.classes is not None else None,
        image_shape=list(parsed.image_shape) if parsed.image_shape else None,
        classes=parsed.classes,
        file_format=parsed.file_format,
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        content=content,
        created_at=utcnow(),
    )
    try:
        with rt.unit_of_work(), rt.sessions.begin() as s:
            s.add(row)
    except IntegrityError as exc:
        raise Conflict(f"a data set named {name!r} already exists") from exc
    return _info(row)


def resolve(rt: Runtime, name: str) -> DatasetInfo | None:
    """A built-in or uploaded data set by name, without loading its content."""
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name]
    with rt.sessions() as s:
        row = s.scalars(
            select(DatasetRow).options(defer(DatasetRow.content)).where(DatasetRow.name == name)
        ).one_or_none()
    return None if row is None else _info(row)


def list_all(rt: Runtime) -> list[DatasetInfo]:
    with rt.sessions() as s:
        rows = s.scalars(
            select(DatasetRow).options(defer(DatasetRow.content)).order_by(DatasetRow.id)
        ).all()
    return [*BUILTIN_DATASETS.values(), *(_info(r) for r in rows)]


def content(rt: Runtime, name: str) -> tuple[bytes, str]:
    """An uploaded data set's normalised NPZ and its SHA-256, for workers."""
    with rt.sessions() as s:
        row = s.scalars(select(DatasetRow).where(DatasetRow.name == name)).one_or_none()
    if row is None:
        detail = " (built-in data sets load on the worker)" if name in BUILTIN_DATASETS else ""
        raise NotFound(f"no uploaded data set named {name!r}{detail}")
    return row.content, row.sha256


def reported_unavailable(rt: Runtime, name: str) -> str | None:
    """The latest 'dataset unavailable' a worker reported for ``name``, if any."""
    with rt.sessions() as s:
        found = s.execute(
            select(LeaseRow.reason, LeaseRow.worker_id, LeaseRow.finished_at)
            .join(StudyRow, StudyRow.id == LeaseRow.study_id)
            .where(StudyRow.dataset == name, LeaseRow.reason.like("dataset unavailable:%"))
            .order_by(LeaseRow.finished_at.desc())
            .limit(1)
        ).first()
    if found is None:
        return None
    reason, worker, when = found
    return f"worker {worker} reported at {when:%Y-%m-%d %H:%M} UTC: {reason}"
