"""The database engine (one per process) and the migration check.

SQLite runs in WAL mode with a busy timeout, so the Optuna dashboard and ``optuna.load_study``
can read while the service writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

import migrations

VERSION_TABLE = "hpo_alembic_version"
"""Optuna keeps its own schema version in ``alembic_version``; ours must not collide."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def missing_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, if it does not exist (SQLite would create it empty on
    the first connection); None for an existing file, memory, or another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def engine_kwargs(url: str, *, busy_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for ``create_engine``, shared with Optuna's own engine."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
    # Up to 40 connections a process: requests run in up to 200 threads, and with the
    # default 15 a burst of 32 workers' calls waited out the pool's timeout (a 503).
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 30}


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    engine = create_engine(url, **engine_kwargs(url, busy_timeout_s=busy_timeout_s))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def alembic_config(url: str) -> Config:
    """Alembic's configuration, built in code so the installed package finds its scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def schema_revisions(engine: Engine) -> tuple[str | None, str]:
    """(the database's revision of the service's tables, the code's head revision)."""
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    assert head is not None
    with engine.connect() as conn:
        current = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    return current, head
