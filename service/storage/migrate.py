"""``hpo migrate``: create or upgrade the service's tables (Alembic) and Optuna's schema."""

from __future__ import annotations

import logging

import optuna
from alembic import command

from service.storage.engine import alembic_config, engine_kwargs

log = logging.getLogger(__name__)


def migrate(url: str, *, busy_timeout_s: float = 30.0) -> None:
    """Bring the database at ``url`` to the code's schema; safe to run again."""
    command.upgrade(alembic_config(url), "head")
    # Optuna creates its tables and stamps its own version on first use; an older Optuna
    # schema is upgraded with Optuna's own migrations.
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url, busy_timeout_s=busy_timeout_s),
        skip_compatibility_check=True,
    )
    try:
        if storage.get_current_version() != storage.get_head_version():
            log.info("upgrading Optuna's schema to %s", storage.get_head_version())
            storage.upgrade()
    finally:
        storage.engine.dispose()
