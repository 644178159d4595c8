"""Retraining runs per model: ``retrain_runs.model_name`` names the model a run retrains.

Runs from before retrained the shipped finding model: they get ``finding``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("retrain_runs") as batch:
        batch.add_column(
            sa.Column("model_name", sa.String(64), nullable=False, server_default="finding")
        )


def downgrade() -> None:
    with op.batch_alter_table("retrain_runs") as batch:
        batch.drop_column("model_name")
