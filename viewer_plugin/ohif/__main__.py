"""``python -m viewer_plugin.ohif``: OHIF on its own port beside a running radnode (the
same as ``radnode viewer``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from radnode_core.settings import Settings
from viewer_plugin.ohif.command import add_arguments, serve


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer_plugin.ohif", description=__doc__)
    parser.add_argument("--config", help="radnode TOML config file")
    add_arguments(parser)
    ns = parser.parse_args(args)
    return serve(Settings.load(ns.config), ns.dist, ns.port, ns.upstream, ns.frame_ancestors)


if __name__ == "__main__":
    sys.exit(main())
