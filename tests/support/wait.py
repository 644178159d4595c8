"""Waiting for state another process or thread brings about: poll a condition, with a
deadline, instead of sleeping a guessed time and asserting afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 120, what: str = "condition",
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that; AssertionError
    naming ``what`` after ``timeout`` seconds. ``check`` may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
