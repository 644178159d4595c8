"""``python -m viewer_plugin.ohif``: serve OHIF beside a running radnode."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from radnode_core.settings import Settings
from viewer_plugin.ohif.server import create_ohif_app, default_dist


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer_plugin.ohif", description=__doc__)
    parser.add_argument("--config", help="radnode TOML config file")
    parser.add_argument("--dist", type=Path, help="OHIF dist/ (default: settings.ohif_dir)")
    parser.add_argument("--port", type=int, help="port (default: settings.ohif_port)")
    parser.add_argument(
        "--upstream", help="radnode's HTTP root (default: http://<host>:<http_port>)"
    )
    ns = parser.parse_args(args)

    settings = Settings.load(ns.config)
    dist = ns.dist or settings.ohif_dir or default_dist()
    upstream = ns.upstream or f"http://{settings.host}:{settings.http_port}"
    try:
        app = create_ohif_app(dist, upstream)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    port = ns.port if ns.port is not None else settings.ohif_port
    uvicorn.run(app, host=settings.host, port=port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
