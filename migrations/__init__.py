"""Alembic migrations: the only source of the service's tables (``hpo migrate``)."""
