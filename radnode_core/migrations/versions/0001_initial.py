"""The schema of radnode 0.1.0.

The store's index, the job queue, AI results, feedback, retraining runs and the PACS
outbox. A database made by 0.1.0 (``metadata.create_all``, no ``alembic_version`` table) has
exactly these tables and is stamped at this revision rather than upgraded through it.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("patient_name", sa.String(324)),
        sa.Column("patient_birth_date", sa.String(8)),
        sa.Column("patient_sex", sa.String(16)),
        sa.Column("study_date", sa.String(8)),
        sa.Column("study_time", sa.String(16)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("study_id", sa.String(16)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("referring_physician_name", sa.String(324)),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("received_seq", sa.Integer, nullable=False),
        sa.Column("queued_seq", sa.Integer, nullable=False),
        sa.Column("first_received_at", sa.Float, nullable=False),
        sa.Column("last_received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("study_uid"),
    )
    op.create_index("ix_studies_pending", "studies", ["last_received_at"])
    op.create_index("ix_studies_patient_id", "studies", ["patient_id"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])

    op.create_table(
        "series",
        sa.Column("series_uid", UID, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.String(64)),
        sa.Column("body_part_examined", sa.String(16)),
        sa.Column("series_date", sa.String(8)),
        sa.Column("series_time", sa.String(16)),
        sa.Column("performed_procedure_step_start_date", sa.String(8)),
        sa.Column("performed_procedure_step_start_time", sa.String(16)),
        sa.Column("scheduled_procedure_step_id", sa.String(16)),
        sa.Column("requested_procedure_id", sa.String(16)),
        sa.PrimaryKeyConstraint("series_uid"),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
    )
    op.create_index("ix_series_study", "series", ["study_uid"])

    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("series_uid", UID, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("calling_aet", sa.String(16)),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer),
        sa.Column("columns", sa.Integer),
        sa.Column("bits_allocated", sa.Integer),
        sa.Column("number_of_frames", sa.Integer),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
        sa.ForeignKeyConstraint(["series_uid"], ["series.series_uid"]),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
    )
    op.create_index("ix_instances_series", "instances", ["series_uid"])
    op.create_index("ix_instances_study", "instances", ["study_uid"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid", "version", name="uq_jobs_study_version"),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
    )
    op.create_index("ix_jobs_state_available", "jobs", ["state", "available_at"])

    op.create_table(
        "results",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("label", sa.String(64)),
        sa.Column("model_version", sa.String(64)),
        sa.Column("sr_sop_instance_uid", UID),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("details", sa.JSON),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid", "version", name="uq_results_study_version"),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
    )
    op.create_index("ix_results_score", "results", ["score"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("result_version", sa.Integer, nullable=False),
        sa.Column("ai_sr_sop_instance_uid", UID, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("ai_label", sa.String(64)),
        sa.Column("comment", sa.Text),
        sa.Column("model_version", sa.String(64)),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("observer_name", sa.String(324), nullable=False),
        sa.Column("sr_sop_instance_uid", UID, nullable=False),
        sa.Column("predecessor_sop_instance_uid", UID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
    )
    op.create_index("ix_feedback_study", "feedback", ["study_uid", "result_version"])

    op.create_table(
        "retrain_runs",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("labels_upto", sa.Integer, nullable=False),
        sa.Column("candidate_version", sa.String(64)),
        sa.Column("decision", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("metrics", sa.JSON),
        sa.Column("artifacts", sa.JSON),
        sa.Column("kfp_run_id", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_retrain_runs_started", "retrain_runs", ["started_at"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("peer", sa.String(32), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("study_uid", UID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("peer", "sop_instance_uid", name="uq_outbox_peer_instance"),
    )
    op.create_index("ix_outbox_due", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_study", "outbox", ["study_uid"])

    op.create_table(
        "pacs_state",
        sa.Column("peer", sa.String(32), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("peer", "key"),
    )


def downgrade() -> None:
    for table in (
        "pacs_state",
        "outbox",
        "retrain_runs",
        "feedback",
        "results",
        "jobs",
        "instances",
        "series",
        "studies",
    ):
        op.drop_table(table)
