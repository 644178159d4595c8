"""``radnode`` subcommands of the HTTP edge (DICOMweb benchmark)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

NodeOptions = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, bench_sub: Any, node_options: NodeOptions) -> None:
    """Add the HTTP edge's commands to the ``radnode`` parser (``sub``) and ``radnode bench``."""
