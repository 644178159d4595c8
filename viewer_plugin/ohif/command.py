"""Serve OHIF on a port of its own beside a running radnode: ``radnode viewer`` and
``python -m viewer_plugin.ohif`` (the compose and Kubernetes ``ohif`` service)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from radnode_core.settings import Settings
from viewer_plugin.ohif.dist import SAME_ORIGIN, default_dist
from viewer_plugin.ohif.server import create_ohif_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dist", type=Path, help="OHIF dist/ (default: settings.ohif_dir)")
    parser.add_argument("--port", type=int, help="port (default: settings.ohif_port)")
    parser.add_argument(
        "--upstream", help="radnode's HTTP root (default: http://<host>:<http_port>)"
    )
    parser.add_argument(
        "--frame-ancestors",
        default=SAME_ORIGIN,
        help="origins whose pages may embed the viewer: the review page's, e.g. "
        "http://127.0.0.1:8080 (default: this origin only)",
    )


def serve(
    settings: Settings,
    dist: Path | None = None,
    port: int | None = None,
    upstream: str | None = None,
    frame_ancestors: str = SAME_ORIGIN,
) -> int:
    """Serve until interrupted; 2 when there is no viewer to serve."""
    dist = dist or settings.ohif_dir or default_dist()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    upstream = upstream or f"http://{host}:{settings.http_port}"
    try:
        app = create_ohif_app(dist, upstream, frame_ancestors=frame_ancestors)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    port = port if port is not None else settings.ohif_port
    uvicorn.run(app, host=settings.host, port=port, log_config=None, access_log=False)
    return 0
