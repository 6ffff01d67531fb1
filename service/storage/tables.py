"""The service's own tables, as ORM classes. The schema itself comes from ``migrations/``
(Alembic is its only source); a test checks these classes and the migrations agree."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.cache
def update_row(table: Table, key: str, columns: frozenset[str]) -> Any:
    """``UPDATE table SET <column> = :new_<column> ... WHERE id = :<key>``, built once per
    table and set of columns (building a statement cost about as much as running it)."""
    return (
        table.update()
        .where(table.c.id == bindparam(key))
        .values({name: bindparam(f"new_{name}", type_=table.c[name].type) for name in columns})
    )


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime}  # noqa: RUF012


class StudyRow(Base):
    """A submitted study. ``slots_used`` counts the trials charged to the budget: active
        leases plus counted results (complete, pruned, failed); a lost or released trial gives
        its slot back. Leasing increments it only while it is below ``n_trials`` (and charges
    ``epochs`` only while that fits in ``epoch_budget``)."""

    __tablename__ = "hpo_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    optuna_study_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    dataset: Mapped[str] = mapped_column(String(128))
    n_trials: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    slots_used: Mapped[int] = mapped_column(Integer, default=0)
    # The epochs its trials may train in all (None: n_trials x epochs), and what they are
    # charged of it: ``epochs`` per active lease, the epochs it ran per counted result.
    epoch_budget: Mapped[int | None] = mapped_column(Integer)
    epochs_charged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When its best configurations were queued again, on fresh seeds and folds (``winners``).
    reevaluated_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(Text)
    # The sanity run before trials: skipped, pending, running, passed, failed.
    sanity_state: Mapped[str] = mapped_column(String(16), server_default="skipped")
    # The best model retrained after the search: none, pending, running, ready, failed.
    final_state: Mapped[str] = mapped_column(String(16), server_default="none")
    final_reason: Mapped[str | None] = mapped_column(Text)
    test_metric: Mapped[float | None] = mapped_column(Float)


class LeaseRow(Base):
    """One piece of work handed to a worker: a trial, a sanity run or a final model.
    ``state`` (``service.states.LeaseState``): pending (slot reserved, trial being created),
    active, complete, pruned, fail, lost (deadline passed), released."""

    __tablename__ = "hpo_leases"
    __table_args__ = (
        Index("ix_hpo_leases_state_deadline", "state", "deadline"),
        Index("ix_hpo_leases_study_state", "study_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("hpo_studies.id", ondelete="CASCADE"))
    # trial: an Optuna trial; sanity: the overfit check; final: retraining the best model.
    kind: Mapped[str] = mapped_column(String(8), server_default="trial")
    trial_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    epochs_run: Mapped[int] = mapped_column(Integer, default=0)
    # The latest epoch's metrics (loss, accuracy, val_loss, ...) as the worker reported them.
    metrics: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # What the worker's probe found (diagnostics.codes), as ``Finding`` records.
    findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # A re-evaluation (``service.domain.winners``): the split it trains on (0, the fixed
    # split, for every other trial) and the number of the trial it repeats.
    fold: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reevaluates: Mapped[int | None] = mapped_column(Integer)
    deadline: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class DatasetRow(Base):
    """An uploaded data set, stored as a normalised NPZ (arrays ``x`` and ``y``)."""

    __tablename__ = "hpo_datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int | None] = mapped_column(Integer)
    image_shape: Mapped[list[int] | None] = mapped_column(JSON)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    file_format: Mapped[str] = mapped_column(String(8))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()


class ModelRow(Base):
    """A study's best configuration, retrained, as a ``.keras`` file with optimizer state."""

    __tablename__ = "hpo_models"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()


class WorkerRow(Base):
    """A worker as the service last saw it (every protocol call refreshes ``last_seen``)."""

    __tablename__ = "hpo_workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column()
    last_seen: Mapped[datetime] = mapped_column(index=True)


class IdempotencyRow(Base):
    """A request made with an ``Idempotency-Key``: its fingerprint, and the answer once
    there is one (``status_code`` NULL: still being processed)."""

    __tablename__ = "hpo_idempotency_keys"
    __table_args__ = (UniqueConstraint("route", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column()


class SuggestionRow(Base):
    """A trial sampled ahead of the workers that will ask for it (``service.domain.feeder``):
    a RUNNING Optuna trial, not yet leased. A lease claims one and deletes it, in the same
    transaction that takes the study's slot."""

    __tablename__ = "hpo_suggestions"
    __table_args__ = (Index("ix_hpo_suggestions_study", "study_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("hpo_studies.id", ondelete="CASCADE"))
    trial_id: Mapped[int] = mapped_column(Integer, unique=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Handed out first when higher: 1 for a lost trial's re-run and the trials queued at
    # submission, 0 for the sampler's.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # A re-evaluation (``service.domain.winners``): the split it trains on (0, the fixed
    # split, for every other trial) and the number of the trial it repeats.
    fold: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reevaluates: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column()


class SamplerRow(Base):
    """Which API process samples a study: ``owner`` until ``expires_at``, renewed while it
    lives; once it expires another process takes the study over."""

    __tablename__ = "hpo_samplers"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()
