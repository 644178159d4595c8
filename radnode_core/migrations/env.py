"""Alembic's environment for the index: runs the migrations on the connection it is given.

:mod:`radnode_core.schema` passes an open connection in ``config.attributes`` (it holds
the schema lock on it). Run from the ``alembic`` command line instead, the database is
``-x url=...`` (or ``sqlalchemy.url``), and ``--sql`` writes the DDL without one.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from radnode_core.index import make_engine

config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("radnode migrations: give the database as -x url=<SQLAlchemy URL>")
    return url


def run_on(connection: Connection) -> None:
    # Both SQLite (BEGIN IMMEDIATE, see radnode_core.index) and PostgreSQL roll DDL back:
    # every pending migration and the version bump commit together or not at all.
    context.configure(
        connection=connection,
        target_metadata=config.attributes.get("target_metadata"),
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_on(given)
else:
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            run_on(conn)
    finally:
        engine.dispose()
