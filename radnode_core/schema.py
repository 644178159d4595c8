"""The index's schema revision: Alembic migrations, brought to head by every process at start.

The scripts in ``radnode_core/migrations/versions`` are the schema's history; the tables
declared on :data:`radnode_core.index.metadata` (the core's and each feature's) are its
head, and a test checks that both agree. Every role builds an
:class:`~radnode_core.index.Index`, which calls :func:`ensure_current`: a database at head
costs one query; otherwise the upgrade runs under a lock (PostgreSQL: a session-level
advisory lock; SQLite: ``flock`` on a file beside the database), so processes starting
together on one database migrate it once and the others find it done (unlocked, two
PostgreSQL sessions creating one table both see it missing and the second CREATE fails
with a unique violation in ``pg_type``).

A database made by radnode 0.1.0 has the tables but no ``alembic_version``: it is stamped
at the first revision, which is that schema, then upgraded. A database at a revision this
code does not know was migrated by a newer radnode, and is refused
(:class:`DatabaseTooNew`): running old code on it could lose what the new schema holds.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from radnode_core import __version__

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"

# The revision that is radnode 0.1.0's schema, and the tables 0.1.0 made.
FIRST_REVISION = "0001"
_FIRST_TABLES = frozenset(
    {
        "studies",
        "series",
        "instances",
        "jobs",
        "results",
        "feedback",
        "retrain_runs",
        "outbox",
        "pacs_state",
    }
)

# pg_advisory_lock key held while PostgreSQL's schema is upgraded ("radnode" in ASCII).
_LOCK_KEY = 0x7261646E6F6465


class SchemaError(RuntimeError):
    """The database's schema is not one this radnode can bring to its head."""


class DatabaseTooNew(SchemaError):
    """The database is at a revision this radnode does not know: a newer one migrated it."""

    def __init__(self, revision: str, head: str) -> None:
        self.revision = revision
        self.head = head
        super().__init__(
            f"the database schema is at revision {revision}, which radnode {__version__} does"
            f" not know (its newest revision is {head}): a newer radnode has migrated this"
            " database; upgrade radnode to run on it"
        )


@dataclass(frozen=True)
class Revision:
    """Where a database stands: its revision (None: no ``alembic_version``) and this code's
    head. ``unversioned``: no revision but radnode's tables, a schema made by radnode 0.1.0."""

    current: str | None
    head: str
    unversioned: bool = False

    @property
    def is_head(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """False when a newer radnode migrated the database (see :class:`DatabaseTooNew`)."""
        return self.current is None or self.current in _known()


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: the revision before (None: empty or 0.1.0) and after, and
    whether a radnode 0.1.0 schema was stamped at the first revision on the way."""

    before: str | None
    after: str
    stamped: bool = False

    @property
    def changed(self) -> bool:
        return self.stamped or self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the scripts are package data, no alembic.ini.

    ``connection`` is the one the migrations run on (env.py takes it from the attributes).
    """
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this radnode knows."""
    revision = _scripts().get_current_head()
    assert revision is not None, "no migration scripts in radnode_core/migrations/versions"
    return revision


@cache
def _known() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _current(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    if len(heads) > 1:
        raise SchemaError(f"the database has several schema heads: {', '.join(heads)}")
    return heads[0] if heads else None


def revision(engine: Engine) -> Revision:
    """The database's revision and this code's head, changing nothing."""
    with engine.connect() as conn:
        current = _current(conn)
        unversioned = current is None and bool(_tables_of_0_1_0(conn))
        return Revision(current, head(), unversioned)


def _tables_of_0_1_0(conn: Connection) -> frozenset[str]:
    return _FIRST_TABLES & set(inspect(conn).get_table_names())


def _refuse_unknown(current: str | None) -> None:
    if not Revision(current, head()).known:
        raise DatabaseTooNew(str(current), head())


def ensure_current(engine: Engine) -> None:
    """Bring the database to head unless it is there: what every process does at start.

    Raises :class:`DatabaseTooNew` for a database a newer radnode migrated, and
    :class:`SchemaError` for one this code cannot migrate.
    """
    with engine.connect() as conn:
        current = _current(conn)
    if current == head():
        return
    _refuse_unknown(current)
    upgrade(engine)


def upgrade(engine: Engine) -> Upgrade:
    """Upgrade the database to head under the schema lock.

    The revision is read again once the lock is held: another process may have done the
    work meanwhile, and then this is a no-op.
    """
    with schema_lock(engine) as conn:
        before = _current(conn)
        conn.commit()
        _refuse_unknown(before)
        current = before
        stamped = current is None and _stamp_0_1_0(conn)
        if stamped:
            current = FIRST_REVISION
        if current != head():
            steps = {"from_revision": current, "to_revision": head()}
            logger.info("upgrading the database schema", extra=steps)
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
            logger.info("database schema upgraded", extra=steps)
        return Upgrade(before, head(), stamped)


def _stamp_0_1_0(conn: Connection) -> bool:
    """Stamp a database made by radnode 0.1.0 at the first revision; False if it is empty."""
    present = _tables_of_0_1_0(conn)
    conn.commit()
    if not present:
        return False
    if missing := _FIRST_TABLES - present:
        raise SchemaError(
            "the database has some of radnode's tables but no alembic_version and lacks "
            f"{', '.join(sorted(missing))}: it is not a radnode 0.1.0 schema to upgrade"
        )
    command.stamp(alembic_config(conn), FIRST_REVISION)
    conn.commit()
    logger.info("radnode 0.1.0 schema stamped", extra={"revision": FIRST_REVISION})
    return True


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection on which this process alone changes the schema: while it is held, a
    radnode starting on the database waits before migrating it."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine) as conn:
            yield conn
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _file_lock(Path(f"{engine.url.database}.lock")), engine.connect() as conn:
            yield conn
    else:
        with engine.connect() as conn:
            yield conn


@contextmanager
def _advisory_lock(engine: Engine) -> Iterator[Connection]:
    """PostgreSQL's session-level advisory lock: held across the upgrade's transactions."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
        conn.commit()
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                conn.commit()
            except SQLAlchemyError:
                # Closing the session releases the lock; the pool must not keep it.
                conn.invalidate()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (SQLite: the lock file beside the database).

    The file stays: removing it would let a process that opened it earlier lock a file
    no longer on the path a third process opens.
    """
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
