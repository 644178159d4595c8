"""Repeated events per source, reported once per interval with a count.

A client that fails to log in a thousand times a minute must not write a thousand audit
messages and log lines: the first event of a key (a source address and a reason) in an
interval is reported as it happens, the others of that interval are counted and reported
together when it ends. Memory is bounded: at most ``max_keys`` keys are tracked; beyond
that every pending count is reported at once and tracking starts afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass
class _Window:
    ends_at: float
    suppressed: int = 0
    last: object = None  # what the newest suppressed event carried (a user name, ...)


Report = Callable[[K, int, object], None]
"""Called with (key, number of events not reported one by one, the newest one's detail)."""


class Throttle(Generic[K]):
    """Lets the first event per key and interval through; counts and later reports the rest."""

    def __init__(
        self,
        interval_s: float,
        report: Report[K],
        *,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
        name: str = "radnode-throttle",
    ) -> None:
        self.interval_s = interval_s
        self.report = report
        self.max_keys = max_keys
        self.clock = clock
        self.name = name
        self._windows: dict[K, _Window] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    def hit(self, key: K, detail: object = None) -> bool:
        """Count one event; True when the caller should report this one itself now."""
        overflow: list[tuple[K, _Window]] = []
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            if window is not None and now < window.ends_at:
                window.suppressed += 1
                window.last = detail
                self._start()
                return False
            if window is not None and window.suppressed:
                overflow.append((key, window))
            if len(self._windows) >= self.max_keys:
                overflow.extend((k, w) for k, w in self._windows.items() if w.suppressed)
                self._windows.clear()
            self._windows[key] = _Window(now + self.interval_s)
        self._emit(overflow)
        return True

    def flush(self) -> None:
        """Report every pending count now (at shutdown)."""
        with self._lock:
            due = [(k, w) for k, w in self._windows.items() if w.suppressed]
            self._windows.clear()
        self._emit(due)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self.flush()

    def _start(self) -> None:
        """Start the reporting thread (lock held); it ends when nothing is pending."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    self._thread = None
                    return
                now = self.clock()
                due = [(k, w) for k, w in self._windows.items() if now >= w.ends_at]
                for key, _ in due:
                    del self._windows[key]
                pending = [w.ends_at for w in self._windows.values() if w.suppressed]
                if not due and not pending:
                    self._thread = None
                    return
                if not due:
                    self._wake.wait(max(0.01, min(pending) - now))
                    continue
            self._emit([(k, w) for k, w in due if w.suppressed])

    def _emit(self, windows: list[tuple[K, _Window]]) -> None:
        for key, window in windows:
            try:
                self.report(key, window.suppressed, window.last)
            except Exception:  # a failing report must not stop the others
                logger.exception("throttled report failed")
