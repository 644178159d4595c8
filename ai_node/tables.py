"""The AI node's tables on the shared metadata: results, radiologists' feedback, retraining runs."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import Index as SqlIndex

from radnode_core.index import UID, metadata

# The AI result of one model on one version of a study (written by ai_node; read by the
# HTTP API). model_name "": the study's own row (its job running, or no model for it).
results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model_name", String(64), nullable=False, server_default="", default=""),
    Column("job_id", Integer, ForeignKey("jobs.id")),
    # pending | running | done | out_of_scope | failed
    Column("status", String(16), nullable=False),
    Column("score", Float),
    Column("label", String(64)),
    Column("model_version", String(320)),  # name:version of each model that made it
    Column("sr_sop_instance_uid", UID),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("details", JSON),  # timings, driving slice, region, per-model versions ...
    UniqueConstraint("study_uid", "version", "model_name", name="uq_results_study_version_model"),
)
SqlIndex("ix_results_score", results.c.score)
# Each model's newest results (drift windows, the dashboard's periods).
SqlIndex("ix_results_model_finished", results.c.model_name, results.c.finished_at)

# A radiologist's judgement of one AI result (viewer_plugin.feedback): confirm or relabel,
# who and when, which model's result (model_name) and version was judged, and the verified /
# amended SR it produced. The labels retraining reads; a study's newest row per result is
# the current label (per model: each model gets its own labels).
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("result_version", Integer, nullable=False),
    Column("ai_sr_sop_instance_uid", UID, nullable=False),
    Column("decision", String(16), nullable=False),  # confirm | relabel
    Column("label", String(64), nullable=False),  # the label the radiologist stands by
    Column("ai_label", String(64)),
    Column("comment", Text),
    Column("model_version", String(320)),  # name:version of each model that made it
    Column("model_name", String(64), nullable=False, server_default="", default=""),
    Column("user", String(128), nullable=False),
    Column("observer_name", String(324), nullable=False),
    Column("sr_sop_instance_uid", UID, nullable=False),
    Column("predecessor_sop_instance_uid", UID, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
SqlIndex("ix_feedback_study", feedback.c.study_uid, feedback.c.result_version)

# One row per retraining run: how it started, each step's state, the candidate's and the
# active model's test-split metrics, the promotion decision and its reason. labels_upto:
# the newest feedback id the run saw (the label-count trigger counts from there);
# model_name: the model the run retrains.
retrain_runs = Table(
    "retrain_runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("model_name", String(64), nullable=False, server_default="finding", default="finding"),
    Column("trigger", String(16), nullable=False),  # manual | labels | kfp
    Column("status", String(16), nullable=False),  # running | succeeded | failed | submitted
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("steps", JSON, nullable=False),  # {step: pending | running | succeeded | failed}
    Column("labels_upto", Integer, nullable=False, default=0),
    Column("candidate_version", String(64)),
    Column("decision", String(16)),  # promoted | refused
    Column("reason", Text),
    Column("metrics", JSON),
    Column("artifacts", JSON),
    Column("kfp_run_id", String(64)),
    Column("error", Text),
)
SqlIndex("ix_retrain_runs_started", retrain_runs.c.started_at)
