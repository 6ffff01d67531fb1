"""Which trials are re-evaluations, and on which fold (``service.domain.winners``): on the
suggestion that hands one out and on its lease, so the lease, the trial list and the
study report know without reading Optuna's user attributes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TABLES = ("hpo_suggestions", "hpo_leases")
_ATTRIBUTES = "trial_user_attributes"  # Optuna's table: trial_id, key, value_json


def upgrade() -> None:
    for table in _TABLES:
        # batch mode: SQLite alters a table by copying it
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("fold", sa.Integer(), nullable=False, server_default="0"))
            batch.add_column(sa.Column("reevaluates", sa.Integer(), nullable=True))
    # The re-evaluations already queued or running keep their fold (and stay marked as
    # re-evaluations), from the user attributes Optuna holds for them. A new database has
    # no Optuna tables yet (``hpo migrate`` creates them after these).
    if _ATTRIBUTES not in sa.inspect(op.get_bind()).get_table_names():
        return
    for table in _TABLES:
        for column in ("fold", "reevaluates"):
            attribute = (
                f"FROM {_ATTRIBUTES} a WHERE a.trial_id = {table}.trial_id AND a.key = '{column}'"
            )
            op.execute(
                f"UPDATE {table} SET {column} = (SELECT CAST(a.value_json AS INTEGER) "
                f"{attribute}) WHERE EXISTS (SELECT 1 {attribute})"
            )


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("reevaluates")
            batch.drop_column("fold")
