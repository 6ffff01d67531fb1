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
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("hpo_studies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("sanity_state", sa.String(16), nullable=False, server_default="skipped")
        )
        batch.add_column(
            sa.Column("final_state", sa.String(16), nullable=False, server_default="none")
        )
        batch.add_column(sa.Column("final_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("test_metric", sa.Float(), nullable=True))
    with op.batch_alter_table("hpo_leases") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="trial"))
    _backfill_dataset_info()


# Revision 0001 knew one data set; studies made then get its description, frozen here as it
# was, so that this migration means the same whatever the code later says of digits.
_DIGITS_0001 = {
    "name": "digits",
    "task": "classification",
    "n_features": 64,
    "n_classes": 10,
    "image_shape": [8, 8, 1],
    "source": "sklearn",
    "n_rows": 1797,
    "sha256": None,
    "description": "scikit-learn load_digits: 8x8 images of handwritten digits",
}


def _backfill_dataset_info() -> None:
    """Studies from 0001 lack spec["dataset_info"], which leasing needs since 0002."""
    studies = sa.table(
        "hpo_studies",
        sa.column("id", sa.Integer()),
        sa.column("dataset", sa.String()),
        sa.column("spec", sa.JSON()),
    )
    conn = op.get_bind()
    for study_id, dataset, spec in conn.execute(
        sa.select(studies.c.id, studies.c.dataset, studies.c.spec)
    ).all():
        if "dataset_info" in spec or dataset != "digits":
            continue
        conn.execute(
            sa.update(studies)
            .where(studies.c.id == study_id)
            .values(spec={**spec, "dataset_info": _DIGITS_0001})
        )


def downgrade() -> None:
    with op.batch_alter_table("hpo_leases") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("hpo_studies") as batch:
        for column in ("test_metric", "final_reason", "final_state", "sanity_state", "reason"):
            batch.drop_column(column)
    op.drop_table("hpo_models")
    op.drop_table("hpo_datasets")
