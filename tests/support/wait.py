"""Waiting for state another process or thread brings about: poll a condition, with a
deadline, instead of sleeping a guessed time and asserting afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 120, what: str = "condition",
             interval: float = 0.1, detail: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    After ``timeout`` seconds, AssertionError naming ``what``, the last value (if it says
    more than no) and ``detail()`` (a process's log, say). ``check`` may raise to give up
    early.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            if value is not None and not isinstance(value, bool):
                message += f"; last: {value!r}"
            if detail is not None:
                message += f"\n{detail()}"
            raise AssertionError(message)
        time.sleep(interval)
