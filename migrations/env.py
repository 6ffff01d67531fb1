"""Alembic environment: runs online against the URL that
``service.storage.engine.alembic_config`` sets."""

from __future__ import annotations

from alembic import context

from service.storage.engine import VERSION_TABLE, make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None

connectable = config.attributes.get("connection")
if connectable is None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connectable, version_table=VERSION_TABLE, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
