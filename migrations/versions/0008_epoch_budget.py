"""A study's budget of epochs, what its trials are charged of it, and when its best
configurations were queued for re-evaluation.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite alters a table by copying it
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(sa.Column("epoch_budget", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("epochs_charged", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("reevaluated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hpo_studies") as batch:
        batch.drop_column("reevaluated_at")
        batch.drop_column("epochs_charged")
        batch.drop_column("epoch_budget")
