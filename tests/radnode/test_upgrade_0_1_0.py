"""Upgrading a database made by radnode 0.1.0: stamped, migrated, every row kept.

0.1.0 made its schema with ``metadata.create_all`` and kept no ``alembic_version``. The
statements below are that schema as 0.1.0 (commit 207f904, ``radnode/index.py``) created
it on each dialect, compiled with ``CreateTable``/``CreateIndex`` and kept as literal SQL,
so that later changes to the declared tables cannot change what these tests start from.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, insert, select

from radnode_core import schema
from radnode_core.index import Index, InstanceRecord
from radnode_core.jobs import JobQueue
from tests.support.postgres import PostgresServer
from tests.support.radnode_process import RADNODE, REPO, RadnodeProcess

SQLITE_0_1_0 = (
    """\
CREATE TABLE outbox (
    id INTEGER NOT NULL,
    peer VARCHAR(32) NOT NULL,
    sop_instance_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL,
    last_error TEXT,
    created_at DATETIME NOT NULL,
    delivered_at DATETIME,
    PRIMARY KEY (id),
    CONSTRAINT uq_outbox_peer_instance UNIQUE (peer, sop_instance_uid)
)
""",
    "CREATE INDEX ix_outbox_due ON outbox (state, next_attempt_at)",
    "CREATE INDEX ix_outbox_study ON outbox (study_uid)",
    """\
CREATE TABLE pacs_state (
    peer VARCHAR(32) NOT NULL,
    "key" VARCHAR(32) NOT NULL,
    value JSON NOT NULL,
    updated_at FLOAT NOT NULL,
    PRIMARY KEY (peer, "key")
)
""",
    """\
CREATE TABLE retrain_runs (
    run_id VARCHAR(40) NOT NULL,
    "trigger" VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    started_at DATETIME NOT NULL,
    finished_at DATETIME,
    steps JSON NOT NULL,
    labels_upto INTEGER NOT NULL,
    candidate_version VARCHAR(64),
    decision VARCHAR(16),
    reason TEXT,
    metrics JSON,
    artifacts JSON,
    kfp_run_id VARCHAR(64),
    error TEXT,
    PRIMARY KEY (run_id)
)
""",
    "CREATE INDEX ix_retrain_runs_started ON retrain_runs (started_at)",
    """\
CREATE TABLE studies (
    study_uid VARCHAR(64) NOT NULL,
    patient_id VARCHAR(64),
    patient_name VARCHAR(324),
    patient_birth_date VARCHAR(8),
    patient_sex VARCHAR(16),
    study_date VARCHAR(8),
    study_time VARCHAR(16),
    accession_number VARCHAR(16),
    study_id VARCHAR(16),
    study_description VARCHAR(64),
    referring_physician_name VARCHAR(324),
    num_instances INTEGER NOT NULL,
    received_seq INTEGER NOT NULL,
    queued_seq INTEGER NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    PRIMARY KEY (study_uid)
)
""",
    "CREATE INDEX ix_studies_patient_id ON studies (patient_id)",
    "CREATE INDEX ix_studies_pending ON studies (last_received_at)",
    "CREATE INDEX ix_studies_study_date ON studies (study_date)",
    """\
CREATE TABLE feedback (
    id INTEGER NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    result_version INTEGER NOT NULL,
    ai_sr_sop_instance_uid VARCHAR(64) NOT NULL,
    decision VARCHAR(16) NOT NULL,
    label VARCHAR(64) NOT NULL,
    ai_label VARCHAR(64),
    comment TEXT,
    model_version VARCHAR(64),
    user VARCHAR(128) NOT NULL,
    observer_name VARCHAR(324) NOT NULL,
    sr_sop_instance_uid VARCHAR(64) NOT NULL,
    predecessor_sop_instance_uid VARCHAR(64) NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_feedback_study ON feedback (study_uid, result_version)",
    """\
CREATE TABLE jobs (
    id INTEGER NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL,
    state VARCHAR(16) NOT NULL,
    reason VARCHAR(32) NOT NULL,
    attempts INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    available_at FLOAT NOT NULL,
    lease_owner VARCHAR(128),
    lease_expires_at FLOAT,
    finished_at DATETIME,
    error TEXT,
    PRIMARY KEY (id),
    CONSTRAINT uq_jobs_study_version UNIQUE (study_uid, version),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_jobs_state_available ON jobs (state, available_at)",
    """\
CREATE TABLE series (
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    modality VARCHAR(16),
    series_number INTEGER,
    series_description VARCHAR(64),
    body_part_examined VARCHAR(16),
    series_date VARCHAR(8),
    series_time VARCHAR(16),
    performed_procedure_step_start_date VARCHAR(8),
    performed_procedure_step_start_time VARCHAR(16),
    scheduled_procedure_step_id VARCHAR(16),
    requested_procedure_id VARCHAR(16),
    PRIMARY KEY (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_series_study ON series (study_uid)",
    """\
CREATE TABLE instances (
    sop_instance_uid VARCHAR(64) NOT NULL,
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    sop_class_uid VARCHAR(64) NOT NULL,
    transfer_syntax_uid VARCHAR(64) NOT NULL,
    instance_number INTEGER,
    path VARCHAR(512) NOT NULL,
    size BIGINT NOT NULL,
    calling_aet VARCHAR(16),
    received_at FLOAT NOT NULL,
    duplicates INTEGER NOT NULL,
    rows INTEGER,
    columns INTEGER,
    bits_allocated INTEGER,
    number_of_frames INTEGER,
    PRIMARY KEY (sop_instance_uid),
    FOREIGN KEY(series_uid) REFERENCES series (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_instances_series ON instances (series_uid)",
    "CREATE INDEX ix_instances_study ON instances (study_uid)",
    """\
CREATE TABLE results (
    id INTEGER NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL,
    job_id INTEGER,
    status VARCHAR(16) NOT NULL,
    score FLOAT,
    label VARCHAR(64),
    model_version VARCHAR(64),
    sr_sop_instance_uid VARCHAR(64),
    error TEXT,
    created_at DATETIME NOT NULL,
    finished_at DATETIME,
    details JSON,
    PRIMARY KEY (id),
    CONSTRAINT uq_results_study_version UNIQUE (study_uid, version),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid),
    FOREIGN KEY(job_id) REFERENCES jobs (id)
)
""",
    "CREATE INDEX ix_results_score ON results (score)",
)

POSTGRESQL_0_1_0 = (
    """\
CREATE TABLE outbox (
    id SERIAL NOT NULL,
    peer VARCHAR(32) NOT NULL,
    sop_instance_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL,
    last_error TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    delivered_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (id),
    CONSTRAINT uq_outbox_peer_instance UNIQUE (peer, sop_instance_uid)
)
""",
    "CREATE INDEX ix_outbox_due ON outbox (state, next_attempt_at)",
    "CREATE INDEX ix_outbox_study ON outbox (study_uid)",
    """\
CREATE TABLE pacs_state (
    peer VARCHAR(32) NOT NULL,
    key VARCHAR(32) NOT NULL,
    value JSON NOT NULL,
    updated_at FLOAT NOT NULL,
    PRIMARY KEY (peer, key)
)
""",
    """\
CREATE TABLE retrain_runs (
    run_id VARCHAR(40) NOT NULL,
    trigger VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at TIMESTAMP WITH TIME ZONE,
    steps JSON NOT NULL,
    labels_upto INTEGER NOT NULL,
    candidate_version VARCHAR(64),
    decision VARCHAR(16),
    reason TEXT,
    metrics JSON,
    artifacts JSON,
    kfp_run_id VARCHAR(64),
    error TEXT,
    PRIMARY KEY (run_id)
)
""",
    "CREATE INDEX ix_retrain_runs_started ON retrain_runs (started_at)",
    """\
CREATE TABLE studies (
    study_uid VARCHAR(64) NOT NULL,
    patient_id VARCHAR(64),
    patient_name VARCHAR(324),
    patient_birth_date VARCHAR(8),
    patient_sex VARCHAR(16),
    study_date VARCHAR(8),
    study_time VARCHAR(16),
    accession_number VARCHAR(16),
    study_id VARCHAR(16),
    study_description VARCHAR(64),
    referring_physician_name VARCHAR(324),
    num_instances INTEGER NOT NULL,
    received_seq INTEGER NOT NULL,
    queued_seq INTEGER NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    PRIMARY KEY (study_uid)
)
""",
    "CREATE INDEX ix_studies_patient_id ON studies (patient_id)",
    "CREATE INDEX ix_studies_pending ON studies (last_received_at)",
    "CREATE INDEX ix_studies_study_date ON studies (study_date)",
    """\
CREATE TABLE feedback (
    id SERIAL NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    result_version INTEGER NOT NULL,
    ai_sr_sop_instance_uid VARCHAR(64) NOT NULL,
    decision VARCHAR(16) NOT NULL,
    label VARCHAR(64) NOT NULL,
    ai_label VARCHAR(64),
    comment TEXT,
    model_version VARCHAR(64),
    "user" VARCHAR(128) NOT NULL,
    observer_name VARCHAR(324) NOT NULL,
    sr_sop_instance_uid VARCHAR(64) NOT NULL,
    predecessor_sop_instance_uid VARCHAR(64) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_feedback_study ON feedback (study_uid, result_version)",
    """\
CREATE TABLE jobs (
    id SERIAL NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL,
    state VARCHAR(16) NOT NULL,
    reason VARCHAR(32) NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    available_at FLOAT NOT NULL,
    lease_owner VARCHAR(128),
    lease_expires_at FLOAT,
    finished_at TIMESTAMP WITH TIME ZONE,
    error TEXT,
    PRIMARY KEY (id),
    CONSTRAINT uq_jobs_study_version UNIQUE (study_uid, version),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_jobs_state_available ON jobs (state, available_at)",
    """\
CREATE TABLE series (
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    modality VARCHAR(16),
    series_number INTEGER,
    series_description VARCHAR(64),
    body_part_examined VARCHAR(16),
    series_date VARCHAR(8),
    series_time VARCHAR(16),
    performed_procedure_step_start_date VARCHAR(8),
    performed_procedure_step_start_time VARCHAR(16),
    scheduled_procedure_step_id VARCHAR(16),
    requested_procedure_id VARCHAR(16),
    PRIMARY KEY (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_series_study ON series (study_uid)",
    """\
CREATE TABLE instances (
    sop_instance_uid VARCHAR(64) NOT NULL,
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    sop_class_uid VARCHAR(64) NOT NULL,
    transfer_syntax_uid VARCHAR(64) NOT NULL,
    instance_number INTEGER,
    path VARCHAR(512) NOT NULL,
    size BIGINT NOT NULL,
    calling_aet VARCHAR(16),
    received_at FLOAT NOT NULL,
    duplicates INTEGER NOT NULL,
    rows INTEGER,
    columns INTEGER,
    bits_allocated INTEGER,
    number_of_frames INTEGER,
    PRIMARY KEY (sop_instance_uid),
    FOREIGN KEY(series_uid) REFERENCES series (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)
""",
    "CREATE INDEX ix_instances_series ON instances (series_uid)",
    "CREATE INDEX ix_instances_study ON instances (study_uid)",
    """\
CREATE TABLE results (
    id SERIAL NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL,
    job_id INTEGER,
    status VARCHAR(16) NOT NULL,
    score FLOAT,
    label VARCHAR(64),
    model_version VARCHAR(64),
    sr_sop_instance_uid VARCHAR(64),
    error TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at TIMESTAMP WITH TIME ZONE,
    details JSON,
    PRIMARY KEY (id),
    CONSTRAINT uq_results_study_version UNIQUE (study_uid, version),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid),
    FOREIGN KEY(job_id) REFERENCES jobs (id)
)
""",
    "CREATE INDEX ix_results_score ON results (score)",
)

_T0 = dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.UTC)
_CT = "1.2.840.10008.5.1.4.1.1.2"
_SR = "1.2.840.10008.5.1.4.1.1.88.22"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"

# Rows in every table 0.1.0 had, in an order the foreign keys accept. Serial ids are left
# to the database, as 0.1.0 did, so its sequences are where a real node leaves them.
ROWS: dict[str, list[dict[str, Any]]] = {
    "studies": [
        {
            "study_uid": "1.2.826.0.1.1", "patient_id": "P1", "patient_name": "Doe^Jane",
            "patient_birth_date": "19600101", "patient_sex": "F", "study_date": "20261101",
            "study_time": "083000", "accession_number": "A1", "study_id": "S1",
            "study_description": "CT CHEST", "referring_physician_name": "Who^Dr",
            "num_instances": 3, "received_seq": 2, "queued_seq": 2,
            "first_received_at": 1_793_000_000.25, "last_received_at": 1_793_000_010.5,
        },
        {
            "study_uid": "1.2.826.0.1.2", "patient_id": "P2", "patient_name": None,
            "patient_birth_date": None, "patient_sex": None, "study_date": "20261102",
            "study_time": None, "accession_number": None, "study_id": None,
            "study_description": None, "referring_physician_name": None,
            "num_instances": 0, "received_seq": 0, "queued_seq": 0,
            "first_received_at": 1_793_000_100.0, "last_received_at": 1_793_000_100.0,
        },
    ],
    "series": [
        {
            "series_uid": "1.2.826.0.1.1.1", "study_uid": "1.2.826.0.1.1", "modality": "CT",
            "series_number": 1, "series_description": "AXIAL", "body_part_examined": "CHEST",
            "series_date": "20261101", "series_time": "083100",
            "performed_procedure_step_start_date": "20261101",
            "performed_procedure_step_start_time": "083000",
            "scheduled_procedure_step_id": "SPS1", "requested_procedure_id": "RP1",
        },
        {
            "series_uid": "1.2.826.0.1.1.2", "study_uid": "1.2.826.0.1.1", "modality": "SR",
            "series_number": 900, "series_description": None, "body_part_examined": None,
            "series_date": None, "series_time": None,
            "performed_procedure_step_start_date": None,
            "performed_procedure_step_start_time": None,
            "scheduled_procedure_step_id": None, "requested_procedure_id": None,
        },
    ],
    "instances": [
        {
            "sop_instance_uid": f"1.2.826.0.1.1.1.{i}", "series_uid": "1.2.826.0.1.1.1",
            "study_uid": "1.2.826.0.1.1", "sop_class_uid": _CT,
            "transfer_syntax_uid": _EXPLICIT_LE, "instance_number": i,
            "path": f"studies/1.2.826.0.1.1/1.2.826.0.1.1.1/1.2.826.0.1.1.1.{i}.dcm",
            "size": 5_000_000_000 + i, "calling_aet": "MODALITY",
            "received_at": 1_793_000_000.25 + i, "duplicates": i - 1,
            "rows": 512, "columns": 512, "bits_allocated": 16, "number_of_frames": None,
        }
        for i in (1, 2)
    ]
    + [
        {
            "sop_instance_uid": "1.2.826.0.1.1.2.1", "series_uid": "1.2.826.0.1.1.2",
            "study_uid": "1.2.826.0.1.1", "sop_class_uid": _SR,
            "transfer_syntax_uid": _EXPLICIT_LE, "instance_number": 1,
            "path": "studies/1.2.826.0.1.1/1.2.826.0.1.1.2/1.2.826.0.1.1.2.1.dcm",
            "size": 4096, "calling_aet": None, "received_at": 1_793_000_020.0,
            "duplicates": 0, "rows": None, "columns": None, "bits_allocated": None,
            "number_of_frames": None,
        }
    ],
    "jobs": [
        {
            "study_uid": "1.2.826.0.1.1", "version": 1, "state": "done", "reason": "released",
            "attempts": 1, "created_at": _T0, "available_at": 1_793_000_011.0,
            "lease_owner": "worker-a", "lease_expires_at": 1_793_000_071.0,
            "finished_at": _T0 + dt.timedelta(seconds=9), "error": None,
        },
        {
            "study_uid": "1.2.826.0.1.1", "version": 2, "state": "failed", "reason": "manual",
            "attempts": 3, "created_at": _T0 + dt.timedelta(minutes=5),
            "available_at": 1_793_000_400.0, "lease_owner": None, "lease_expires_at": None,
            "finished_at": _T0 + dt.timedelta(minutes=6), "error": "model crashed\ntwice",
        },
    ],
    "results": [
        {
            "study_uid": "1.2.826.0.1.1", "version": 1, "job_id": 1, "status": "done",
            "score": 0.875, "label": "nodule", "model_version": "chest-1.0.0",
            "sr_sop_instance_uid": "1.2.826.0.1.1.2.1", "error": None, "created_at": _T0,
            "finished_at": _T0 + dt.timedelta(seconds=9),
            "details": {"timings_ms": {"infer": 812.5}, "slice": 41, "region": "chest"},
        },
        {
            "study_uid": "1.2.826.0.1.1", "version": 2, "job_id": 2, "status": "failed",
            "score": None, "label": None, "model_version": None, "sr_sop_instance_uid": None,
            "error": "model crashed", "created_at": _T0 + dt.timedelta(minutes=5),
            "finished_at": None, "details": None,
        },
    ],
    "feedback": [
        {
            "study_uid": "1.2.826.0.1.1", "result_version": 1,
            "ai_sr_sop_instance_uid": "1.2.826.0.1.1.2.1", "decision": "relabel",
            "label": "normal", "ai_label": "nodule", "comment": "a vessel, not a nodule",
            "model_version": "chest-1.0.0", "user": "radiologist@example.org",
            "observer_name": "Reader^Rita", "sr_sop_instance_uid": "1.2.826.0.1.1.2.2",
            "predecessor_sop_instance_uid": "1.2.826.0.1.1.2.1",
            "created_at": _T0 + dt.timedelta(hours=2),
        }
    ],
    "retrain_runs": [
        {
            "run_id": "run-20261102-0001", "trigger": "labels", "status": "succeeded",
            "started_at": _T0 + dt.timedelta(days=1), "finished_at": None,
            "steps": {"export": "succeeded", "train": "succeeded", "promote": "succeeded"},
            "labels_upto": 1, "candidate_version": "chest-1.1.0", "decision": "promoted",
            "reason": "AUC 0.91 >= 0.89", "metrics": {"candidate": {"auc": 0.91}},
            "artifacts": {"model": "models/chest/1.1.0"}, "kfp_run_id": None, "error": None,
        }
    ],
    "outbox": [
        {
            "peer": "pacs", "sop_instance_uid": "1.2.826.0.1.1.2.1",
            "study_uid": "1.2.826.0.1.1", "kind": "sr", "state": "delivered", "attempts": 1,
            "next_attempt_at": 1_793_000_021.0, "last_error": None, "created_at": _T0,
            "delivered_at": _T0 + dt.timedelta(seconds=12),
        },
        {
            "peer": "pacs", "sop_instance_uid": "1.2.826.0.1.1.1.1",
            "study_uid": "1.2.826.0.1.1", "kind": "original", "state": "failed",
            "attempts": 8, "next_attempt_at": 1_793_009_999.0,
            "last_error": "association rejected", "created_at": _T0, "delivered_at": None,
        },
    ],
    "pacs_state": [
        {"peer": "pacs", "key": "changes_seq", "value": 1234, "updated_at": 1_793_000_500.0},
        {
            "peer": "pacs", "key": "last_check", "value": {"ok": True, "at": 1_793_000_600.0},
            "updated_at": 1_793_000_600.0,
        },
    ],
}


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@dataclass(frozen=True)
class Database:
    """A database as radnode 0.1.0 left it, and the options that point radnode at it."""

    url: str
    data_dir: Path
    node_options: list[str]  # beyond --data-dir


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'index.sqlite3'}"
        _create_0_1_0(url, SQLITE_0_1_0)
        return Database(url, data_dir, [])
    url = _fresh_database(request.getfixturevalue("pg"))
    _create_0_1_0(url, POSTGRESQL_0_1_0)
    return Database(url, data_dir, ["--database-url", url])


def _fresh_database(pg: PostgresServer) -> str:
    import psycopg

    name = f"v010_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=radnode dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def _create_0_1_0(url: str, ddl: tuple[str, ...]) -> None:
    """The schema 0.1.0 made, then rows in every table."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in ddl:
                conn.exec_driver_sql(statement)
        tables = MetaData()
        tables.reflect(engine, only=list(ROWS))
        with engine.begin() as conn:
            for name, rows in ROWS.items():
                conn.execute(insert(tables.tables[name]), rows)
    finally:
        engine.dispose()


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of 0.1.0's tables, 0.1.0's columns of it, read back through reflection (not
    radnode's metadata): columns later migrations add are not 0.1.0's data."""
    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine, only=list(ROWS))
        with engine.connect() as conn:
            return {
                name: [
                    tuple(row)
                    for row in conn.execute(
                        select(*[table.c[col] for col in ROWS[name][0]]).order_by(
                            *table.primary_key.columns
                        )
                    )
                ]
                for name, table in ((n, tables.tables[n]) for n in ROWS)
            }
    finally:
        engine.dispose()


def _radnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RADNODE, *args], capture_output=True, text=True, cwd=REPO, timeout=180
    )


def _health(node: RadnodeProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/healthz", timeout=10) as rsp:
        assert rsp.status == 200
        return dict(json.loads(rsp.read()))


def test_the_rows_are_what_was_written(database: Database) -> None:
    """The dump the other tests compare against holds every row written, in every table."""
    dump = _dump(database.url)
    assert {name: len(rows) for name, rows in dump.items()} == {
        name: len(rows) for name, rows in ROWS.items()
    }
    assert dump["results"][0][-1] == ROWS["results"][0]["details"]
    assert dump["pacs_state"][1][2] == {"ok": True, "at": 1_793_000_600.0}


def test_db_upgrade_stamps_and_migrates_a_0_1_0_database_keeping_every_row(
    database: Database,
) -> None:
    options = ["--data-dir", str(database.data_dir), *database.node_options]
    before = _dump(database.url)
    head = schema.head()

    current = _radnode("db", "current", *options)
    assert current.returncode == 1, current.stderr
    assert "radnode 0.1.0's unversioned schema (not head" in current.stdout

    upgraded = _radnode("db", "upgrade", *options)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (
        f"from radnode 0.1.0's unversioned schema (stamped {schema.FIRST_REVISION}) to {head}"
        in upgraded.stdout
    )
    assert _dump(database.url) == before

    current = _radnode("db", "current", *options)
    assert (current.returncode, current.stdout.strip()) == (0, f"{head} (head)")
    again = _radnode("db", "upgrade", *options)
    assert again.returncode == 0, again.stderr
    assert f"already at {head} (head): nothing to do" in again.stdout
    assert _dump(database.url) == before

    api = RadnodeProcess(database.data_dir, "api", *database.node_options).start()
    try:
        assert _health(api)["index"] == {"studies": 2, "series": 2, "instances": 3}
    finally:
        assert api.stop() == 0, api.log()[-3000:]
    assert _dump(database.url) == before


def test_a_role_starting_on_a_0_1_0_database_upgrades_it_and_keeps_writing(
    database: Database,
) -> None:
    before = _dump(database.url)
    api = RadnodeProcess(database.data_dir, "api", *database.node_options).start()
    try:
        assert _health(api)["index"]["instances"] == 3
    finally:
        assert api.stop() == 0, api.log()[-3000:]
    assert _dump(database.url) == before

    index = Index(database.url)
    try:
        assert schema.revision(index.engine).is_head
        # The serial columns carry on from 0.1.0's rows: the next job is number 3.
        index.add_instance(
            InstanceRecord(
                sop_instance_uid="1.2.826.0.1.2.1.1", sop_class_uid=_CT,
                series_uid="1.2.826.0.1.2.1", study_uid="1.2.826.0.1.2",
                transfer_syntax_uid=_EXPLICIT_LE, path="studies/1.2.826.0.1.2/x.dcm",
                size=10, received_at=1_793_000_700.0,
            )
        )
        assert JobQueue(index).enqueue_if_due("1.2.826.0.1.2", "released") == 3
    finally:
        index.close()
    after = _dump(database.url)
    for name, rows in before.items():
        kept = rows[:1] if name == "studies" else rows  # study 1.2.826.0.1.2 just got one
        assert after[name][: len(kept)] == kept, name
    assert (len(after["instances"]), len(after["jobs"])) == (4, 3)
