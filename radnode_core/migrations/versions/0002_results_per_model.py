"""Results and feedback per model: a study version has one result per model.

``results.model_name`` (the model's registry name; "" for the study's own row) joins the
unique key, which becomes (study_uid, version, model_name); ``feedback.model_name`` says
which model's result a radiologist judged. ``model_version`` of both widens to 320
characters (name:version of each model that made a result). Rows from before were the
shipped finding model's (it wrote every SR): results with an SR and every feedback row
get model "finding"; a result without an SR (failed) stays the study's own row.

Downgrading keeps one result per (study, version), the first written, and drops the rest.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("model_name", sa.String(64), nullable=False, server_default=""))
        batch.alter_column("model_version", existing_type=sa.String(64), type_=sa.String(320))
        batch.drop_constraint("uq_results_study_version", type_="unique")
        batch.create_unique_constraint(
            "uq_results_study_version_model", ["study_uid", "version", "model_name"]
        )
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("model_name", sa.String(64), nullable=False, server_default=""))
        batch.alter_column("model_version", existing_type=sa.String(64), type_=sa.String(320))
    op.execute("UPDATE results SET model_name = 'finding' WHERE sr_sop_instance_uid IS NOT NULL")
    op.execute("UPDATE feedback SET model_name = 'finding'")


def downgrade() -> None:
    op.execute(
        "DELETE FROM results WHERE id NOT IN "
        "(SELECT keep FROM (SELECT MIN(id) AS keep FROM results "
        "GROUP BY study_uid, version) AS firsts)"
    )
    with op.batch_alter_table("feedback") as batch:
        batch.alter_column("model_version", existing_type=sa.String(320), type_=sa.String(64))
        batch.drop_column("model_name")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint("uq_results_study_version_model", type_="unique")
        batch.create_unique_constraint("uq_results_study_version", ["study_uid", "version"])
        batch.alter_column("model_version", existing_type=sa.String(320), type_=sa.String(64))
        batch.drop_column("model_name")
