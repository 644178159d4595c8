"""Indexing a received instance: the rows, duplicates, conflicts and rollback, on SQLite and
on a real PostgreSQL, and the committed rows as another connection reads them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from radnode_core.index import Index, InstanceConflict, InstanceRecord, instances, series, studies
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request, tmp_path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    else:
        import psycopg

        server: PostgresServer = request.getfixturevalue("pg")
        name = f"commit_{time.monotonic_ns()}"
        with psycopg.connect(
            f"host=127.0.0.1 port={server.port} user=radnode dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
    idx = Index(url)
    yield idx
    idx.close()


def _record(uid: str, series_uid: str = "1.2.3.1", **kw: Any) -> InstanceRecord:
    values: dict[str, Any] = {
        "sop_instance_uid": uid,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "series_uid": series_uid,
        "study_uid": "1.2.3",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "path": f"studies/1.2.3/{series_uid}/{uid}.dcm",
        "size": 525_000,
        "received_at": 1_790_000_000.5,
        "calling_aet": "CT01",
        "instance_number": 7,
        "study": {"patient_id": "P-1", "patient_name": "Doe^Jane", "study_date": "20261130"},
        "series": {"modality": "CT", "series_number": 3, "body_part_examined": "CHEST"},
        "image": {"rows": 512, "columns": 512, "bits_allocated": 16, "number_of_frames": None},
    }
    values.update(kw)
    return InstanceRecord(**values)


def _read(idx: Index, table, **where) -> list[dict]:
    """Rows as a new engine of its own reads them: only what was committed."""
    engine = create_engine(idx.url)
    try:
        with engine.connect() as conn:
            query = select(table)
            for column, value in where.items():
                query = query.where(table.c[column] == value)
            return [dict(row._mapping) for row in conn.execute(query)]
    finally:
        engine.dispose()


def test_a_new_instance_commits_its_study_series_and_instance_rows(index: Index) -> None:
    assert index.add_instance(_record("1.2.3.1.1")) is True
    assert index.add_instance(_record("1.2.3.1.2", instance_number=8)) is True

    (study,) = _read(index, studies)
    assert study["study_uid"] == "1.2.3"
    assert (study["patient_id"], study["patient_name"], study["study_date"]) == (
        "P-1",
        "Doe^Jane",
        "20261130",
    )
    assert (study["num_instances"], study["received_seq"], study["queued_seq"]) == (2, 2, 0)
    assert study["first_received_at"] == study["last_received_at"] == 1_790_000_000.5
    (row,) = _read(index, series)
    assert (row["series_uid"], row["modality"], row["series_number"]) == ("1.2.3.1", "CT", 3)
    assert row["body_part_examined"] == "CHEST" and row["series_description"] is None
    rows = {r["sop_instance_uid"]: r for r in _read(index, instances)}
    assert set(rows) == {"1.2.3.1.1", "1.2.3.1.2"}
    first = rows["1.2.3.1.1"]
    assert first["path"] == "studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm"
    assert (first["size"], first["calling_aet"], first["instance_number"]) == (525_000, "CT01", 7)
    assert (first["rows"], first["columns"], first["bits_allocated"]) == (512, 512, 16)
    assert first["number_of_frames"] is None and first["duplicates"] == 0
    assert rows["1.2.3.1.2"]["instance_number"] == 8


def test_a_derived_instance_counts_without_making_the_study_due(index: Index) -> None:
    index.add_instance(_record("1.2.3.1.1"))
    assert index.add_instance(_record("1.2.3.9.1", series_uid="1.2.3.9", analyze=False)) is True
    (study,) = _read(index, studies)
    assert (study["num_instances"], study["received_seq"]) == (2, 1)


def test_a_resend_is_a_duplicate_and_a_moved_uid_a_conflict(index: Index) -> None:
    assert index.add_instance(_record("1.2.3.1.1")) is True
    assert index.add_instance(_record("1.2.3.1.1")) is False
    (row,) = _read(index, instances)
    assert row["duplicates"] == 1
    with pytest.raises(InstanceConflict):
        index.add_instance(_record("1.2.3.1.1", series_uid="1.2.3.5"))
    # the conflicting newcomer's series row was rolled back with it
    assert [r["series_uid"] for r in _read(index, series)] == ["1.2.3.1"]
    (study,) = _read(index, studies)
    assert (study["num_instances"], study["received_seq"]) == (1, 1)


def test_a_failing_statement_leaves_no_row_behind(index: Index) -> None:
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own IntegrityError
        index.add_instance(_record("1.2.3.1.1", path=None))  # path is NOT NULL
    assert _read(index, studies) == []
    assert _read(index, series) == []
    assert _read(index, instances) == []
    # and the pooled connection it used is good for the next instance
    assert index.add_instance(_record("1.2.3.1.1")) is True
    assert len(_read(index, instances)) == 1
