"""``python -m radnode.probe``: the health probe of a role that serves no HTTP (the worker).

Kubernetes runs it inside the pod (k8s/base/worker.yaml): it loads the settings the
process loaded (``RADNODE_*``, the config file) and asks the index ``SELECT 1``. Exit
status 0 when both work; 1, with the reason on stderr, when the index does not answer;
2 when the settings are invalid. It creates nothing (no schema, no data dir), so a probe
never changes the node.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from radnode_core.settings import Settings


def check_index(url: str, timeout_s: int = 5) -> str | None:
    """None when the index at ``url`` answers ``SELECT 1``; else the reason, in words."""
    if url.startswith("sqlite:///"):
        if not Path(url.removeprefix("sqlite:///")).is_file():
            return "index unavailable: no SQLite index file yet"
        connect_args: dict[str, object] = {}
    else:
        connect_args = {"connect_timeout": timeout_s}
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"index unavailable: {type(getattr(exc, 'orig', None) or exc).__name__}"
    finally:
        engine.dispose()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options: the probe checks what the process itself would use
    try:
        settings = Settings.load()
    except (ValidationError, OSError, ValueError) as exc:
        print(f"radnode probe: invalid settings: {exc}", file=sys.stderr)
        return 2
    problem = check_index(settings.index_url)
    if problem is not None:
        print(f"radnode probe: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
