"""Uploaded data sets, sanity and final-model jobs, and the best model.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=True),
        sa.Column("image_shape", sa.JSON(), nullable=True),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("file_format", sa.String(8), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "hpo_models",
        sa.Column("study_id", sa.Integer(),
                  sa.ForeignKey("hpo_studies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("sanity_state", sa.String(16), nullable=False,
                                   server_default="skipped"))
        batch.add_column(sa.Column("final_state", sa.String(16), nullable=False,
                                   server_default="none"))
        batch.add_column(sa.Column("final_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("test_metric", sa.Float(), nullable=True))
    with op.batch_alter_table("hpo_leases") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False,
                                   server_default="trial"))


def downgrade() -> None:
    with op.batch_alter_table("hpo_leases") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("hpo_studies") as batch:
        for column in ("test_metric", "final_reason", "final_state", "sanity_state", "reason"):
            batch.drop_column(column)
    op.drop_table("hpo_models")
    op.drop_table("hpo_datasets")
