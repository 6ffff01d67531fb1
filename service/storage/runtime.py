"""The service's process-wide state: settings, the engine, Optuna's storage, the write lock."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.errors import NotMigrated
from service.storage.engine import is_sqlite, make_engine, missing_sqlite_file, schema_revisions
from service.storage.optuna_adapter import OptunaAdapter
from service.storage.tables import StudyRow


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    optuna: OptunaAdapter
    # SQLite allows one writer at a time, and a transaction that reads before it writes
    # can fail at once ("database is locked") when another wrote in between. With SQLite
    # the service is the only writer, so it serialises its own units of work here.
    # PostgreSQL needs no process lock: leasing is a conditional UPDATE (a row lock).
    _lock: threading.RLock | None = field(default=None)
    metrics: Any = None  # service.api.metrics.Metrics, attached by the app
    # The feeder (service.domain.feeder) and the leases signal each other: ``wanted``
    # wakes the feeder (a suggestion was taken, a slot given back; a multiprocessing
    # Event when the feeder samples in a process of its own), and ``suggested`` wakes the
    # leases waiting for a suggestion, ``fed`` counting the wake-ups (see ``fed_one``).
    wanted: Any = field(default_factory=threading.Event)
    suggested: threading.Condition = field(default_factory=threading.Condition)
    fed: int = 0
    # The sampler process releases this semaphore once per suggestion it commits; a
    # thread of the API process turns each release into ``fed_one`` (sampler_process.py).
    fed_across: Any = None
    # What ``service.domain.workers_seen`` last wrote of each worker, and when.
    seen: dict[str, tuple[float, Any]] = field(default_factory=dict)
    # Studies as created, by (id, created_at): see ``as_created``.
    _created: dict[tuple[int, datetime], StudyRow] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Connect to a migrated database.

        Raises:
            NotMigrated: the service's tables are missing or older than the code.
        """
        missing = missing_sqlite_file(settings.database_url)
        if missing is not None:  # refuse without connecting, which would create it empty
            raise NotMigrated(
                f"the database at {settings.database_url} is not migrated (there is no file "
                f"{missing}); run `hpo migrate` first"
            )
        engine = make_engine(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
        current, head = schema_revisions(engine)
        if current != head:
            engine.dispose()
            found = "no service tables" if current is None else f"revision {current}"
            raise NotMigrated(
                f"the database at {settings.database_url} is not migrated ({found}, the code "
                f"needs {head}); run `hpo migrate` first"
            )
        bridge = OptunaAdapter(
            settings.database_url,
            busy_timeout_s=settings.sqlite_busy_timeout_s,
            artifact_dir=settings.artifact_dir,
        )
        lock = threading.RLock() if is_sqlite(settings.database_url) else None
        return cls(settings, engine, sessionmaker(engine, expire_on_commit=False), bridge, lock)

    def as_created(self, study_id: int, created_at: datetime) -> StudyRow:
        """A study's row as far as it never changes once the study hands out trials (name,
        spec, budget, epochs, metric, direction, Optuna id), read once per process: the
        protocol's calls need these on every report, and parsing the spec each time cost
        more than the report's own writes. Its status and counters are NOT current.
        ``created_at`` tells a study apart from a later one given a deleted one's id."""
        key = (study_id, created_at)
        row = self._created.get(key)
        if row is None:
            with self.sessions() as s:
                row = s.get_one(StudyRow, study_id)
                s.expunge(row)
            if row.created_at != created_at or row.optuna_study_id is None:
                return row  # (deleted and re-created meanwhile, or still being created)
            self._created[key] = row
        return row

    def fed_one(self) -> None:
        """A suggestion (or a re-run) was committed: wake one lease waiting for one."""
        if self.fed_across is not None:  # (in the sampler process: tell the API process)
            self.fed_across.release()
            return
        with self.suggested:
            self.fed += 1
            self.suggested.notify()

    def close(self) -> None:
        self.optuna.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, holding the SQLite write lock (if any) for it alone: the
        protocol's calls read and compute outside it, so the lock is held only while the
        database is written."""
        with self.unit_of_work(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """Hold the SQLite write lock (if any) for a whole service operation."""
        if self._lock is None:
            yield
            return
        with self._lock:
            yield
