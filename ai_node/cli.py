"""``radnode`` subcommands of the AI node (model training and registry, inference benchmarks)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

NodeOptions = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, bench_sub: Any, node_options: NodeOptions) -> None:
    """Add the AI node's commands to the ``radnode`` parser (``sub``) and ``radnode bench``."""
