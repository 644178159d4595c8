"""An index on ``results (model_name, finished_at)``: each model's newest results, which
the drift checks and the dashboard read on every scrape and page.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_results_model_finished", "results", ["model_name", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_results_model_finished", table_name="results")
