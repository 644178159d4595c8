"""A throw-away PostgreSQL server for tests: a real `postgres` on a free loopback port.

    with PostgresServer() as pg:
        node = RadnodeProcess(..., "--database-url", pg.url)
        pg.restart()        # a database restart, for the reliability tests

It needs the Debian `postgresql` package (``make system-deps`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support.processes import free_port
from tests.support.tools import require_tool


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    """initdb + pg_ctl in its own folder under /tmp; `url` is radnode's --database-url."""

    def __init__(self, database: str = "radnode") -> None:
        self.database = database
        self.port = free_port()
        self.root: Path | None = None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://radnode@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresServer:
        for tool in ("initdb", "pg_ctl"):
            require_tool(tool)
        # Its own folder under /tmp (pytest's base folder is private to root).
        self.root = Path(tempfile.mkdtemp(prefix="radnode-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        subprocess.run(
            _as_postgres(["initdb", "-D", str(self.data), "-U", "radnode", "--auth=trust",
                          "-E", "UTF8"]),
            check=True, capture_output=True,
        )
        self._pg_ctl("start")
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=radnode dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def _pg_ctl(self, action: str) -> None:
        assert self.root is not None
        args = ["pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w"]
        if action in ("start", "restart"):
            args += ["-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"]
        else:
            args += ["-m", "fast"]
        subprocess.run(_as_postgres([*args, action]), check=True, capture_output=True)

    def stop(self) -> None:
        if self.root is None:
            return
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(self.data), "-m", "fast", "stop"]),
                       check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again on the same port."""
        self._pg_ctl("stop")
        self._pg_ctl("start")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
