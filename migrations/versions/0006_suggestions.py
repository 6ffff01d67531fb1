"""Trials sampled ahead of the workers (the suggestion buffer), and which API process
samples each study.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_suggestions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("hpo_studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("trial_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hpo_suggestions_study", "hpo_suggestions", ["study_id", "id"])
    op.create_table(
        "hpo_samplers",
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("hpo_studies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hpo_samplers")
    op.drop_index("ix_hpo_suggestions_study", table_name="hpo_suggestions")
    op.drop_table("hpo_suggestions")
