"""The schema's migrations: they make the tables the code declares, a database at head
runs none, processes starting together migrate an empty database once, and a database a
newer radnode migrated is refused."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, String, create_engine, text

import ai_node.tables  # noqa: F401 - every feature's tables on the shared metadata
import pacs_link.tables  # noqa: F401
from radnode_core import schema
from radnode_core.index import Index, make_engine, metadata
from tests.support.postgres import PostgresServer
from tests.support.processes import free_port
from tests.support.processes import wait_port as wait_for_port
from tests.support.radnode_process import RADNODE, REPO
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def _fresh_database(pg: PostgresServer) -> str:
    import psycopg

    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=radnode dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite3'}"
    return _fresh_database(request.getfixturevalue("pg"))


def _differences(engine: Engine, tables: MetaData) -> tuple[list[Any], str]:
    """What autogenerate finds between the database and ``tables``, and the ops it proposes."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        found = compare_metadata(context, tables)
        ops = produce_migrations(context, tables).upgrade_ops
        assert ops is not None
        proposed = render_python_code(
            ops,
            render_as_batch=engine.dialect.name == "sqlite",
        )
    return found, proposed


def _how_to_migrate(dialect: str, found: list[Any], proposed: str) -> str:
    head = schema.head()
    next_id = f"{int(head) + 1:04d}" if head.isdigit() else "<next>"
    listed = "\n".join(f"  {difference}" for difference in found)
    return (
        f"The tables declared on radnode_core.index.metadata differ from what the migrations"
        f" make ({dialect}, upgraded to head {head}):\n{listed}\n\n"
        "A change to a table needs a migration (docs/deployment.md, 'Adding a migration'):"
        " from the repository root run\n\n"
        f'    .venv/bin/alembic revision -m "what changed" --rev-id {next_id}\n\n'
        "(pyproject.toml's [tool.alembic] points at radnode_core/migrations), then write its"
        " upgrade() and downgrade() by hand as op.* DDL, importing no feature module. For"
        f" these differences autogenerate proposes:\n\n{proposed}"
    )


def test_the_migrations_make_the_tables_the_code_declares(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert schema.upgrade(engine).after == schema.head()
        found, proposed = _differences(engine, metadata)
    finally:
        engine.dispose()
    assert not found, _how_to_migrate(engine.dialect.name, found, proposed)


def test_a_table_changed_without_a_migration_is_caught(tmp_path: Path) -> None:
    changed = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["studies"].append_column(Column("institution_name", String(64)))
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        schema.upgrade(engine)
        found, proposed = _differences(engine, changed)
    finally:
        engine.dispose()
    assert [d[0] for d in found] == ["add_column"]
    message = _how_to_migrate("sqlite", found, proposed)
    assert "alembic revision" in message and "institution_name" in proposed


def test_an_index_at_head_runs_no_migration(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    Index(url).close()

    def refuse(_engine: Engine) -> None:
        raise AssertionError("a database at head was upgraded")

    monkeypatch.setattr(schema, "upgrade", refuse)
    index = Index(url)
    try:
        assert schema.revision(index.engine).is_head
    finally:
        index.close()


def _stamp(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_a_database_a_newer_radnode_migrated_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'index.sqlite3'}"
    Index(url).close()
    _stamp(url, "9f3e0c2a7b1d")
    head = schema.head()

    with pytest.raises(schema.DatabaseTooNew) as refused:
        Index(url)
    assert (refused.value.revision, refused.value.head) == ("9f3e0c2a7b1d", head)

    for command in (["api", "--http-port", str(free_port())], ["db", "current"]):
        result = subprocess.run(
            [*RADNODE, *command, "--data-dir", str(data)],
            capture_output=True, text=True, cwd=REPO, timeout=180,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("radnode: the database schema is at revision 9f3e0c2a7b1d")
        assert f"newest revision is {head}" in message and "upgrade radnode" in message
    engine = create_engine(url)
    assert schema.revision(engine).current == "9f3e0c2a7b1d"  # left as it was
    engine.dispose()


def test_some_of_the_tables_without_a_revision_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE studies (study_uid VARCHAR(64) PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(schema.SchemaError, match="lacks feedback, instances, jobs"):
        Index(url)


# -- processes starting together ---------------------------------------------------


def _advisory_lock_waiters(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return int(conn.execute(text(waiting)).scalar_one())
    finally:
        engine.dispose()


def _flock_waiters(path: Path) -> int:
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and inode in line)


def test_processes_starting_together_on_an_empty_database_migrate_it_once(
    empty_url: str, tmp_path: Path
) -> None:
    """Two roles and two ``radnode db upgrade`` start on one empty database; the schema
    lock is held by the test until every one of them waits for it, then released, so
    they all race for the upgrade: one migrates, every other finds the schema at head."""
    engine = make_engine(empty_url)
    is_sqlite = engine.dialect.name == "sqlite"
    options = [] if is_sqlite else ["--database-url", empty_url]
    ports = [free_port(), free_port()]
    commands = [
        ["db", "upgrade"],
        ["db", "upgrade"],
        *(["api", "--http-port", str(port)] for port in ports),
    ]
    if is_sqlite:
        data = tmp_path  # the data dir whose index.sqlite3 empty_url is
        waiters = lambda: _flock_waiters(tmp_path / "index.sqlite3.lock")  # noqa: E731
    else:
        data = tmp_path / "data"
        waiters = lambda: _advisory_lock_waiters(empty_url)  # noqa: E731
    logs = [tmp_path / f"start-{i}.log" for i in range(len(commands))]
    processes: list[subprocess.Popen[bytes]] = []
    with schema.schema_lock(engine):
        for command, log in zip(commands, logs, strict=True):
            processes.append(
                subprocess.Popen(
                    [*RADNODE, *command, "--data-dir", str(data), *options],
                    stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
                )
            )
        try:
            wait_for(lambda: waiters() == len(commands), timeout=180, what="every start to wait")
        except AssertionError:
            for p in processes:
                p.kill()
            raise
    try:
        upgrades = [p.wait(timeout=120) for p in processes[:2]]
        outputs = [log.read_text() for log in logs[:2]]
        assert upgrades == [0, 0], outputs
        for port, process in zip(ports, processes[2:], strict=True):
            wait_for_port(port, process)
    finally:
        for p in processes[2:]:
            p.terminate()
        codes = [p.wait(timeout=30) for p in processes[2:]]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs[2:]]
    migrated = sum("upgrading the database schema" in log.read_text() for log in logs)
    assert migrated == 1, [log.read_text()[-2000:] for log in logs]
    assert schema.revision(engine).is_head
    engine.dispose()


def test_threads_opening_an_index_together_on_an_empty_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_index() -> None:
        barrier.wait()
        try:
            Index(url).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=open_index) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and not any(t.is_alive() for t in threads)
