"""Headers of stored instances for QIDO-RS ``includefield`` and WADO-RS metadata.

Read with ``stop_before_pixels`` and kept in a small LRU cache keyed by the
file's path and size (a replaced instance gets a new size or is re-read after
eviction; files are written once, by rename).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread


class HeaderCache:
    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


def read_header(path: Path) -> Dataset:
    """The dataset without Pixel Data (and nothing after it)."""
    return dcmread(path, stop_before_pixels=True)


class InstanceHeaders:
    """The app's caches: instance headers (datasets) and per-instance metadata JSON text."""

    def __init__(self, datasets: int = 4096, metadata: int = 20000) -> None:
        self.datasets = HeaderCache(datasets)
        self.metadata = HeaderCache(metadata)

    def dataset(self, path: Path, size: int = 0) -> Dataset:
        key = (str(path), size)
        cached = self.datasets.get(key)
        if cached is None:
            cached = read_header(path)
            for _ in cached:  # convert every raw element now: reads never mutate it later
                pass
            self.datasets.put(key, cached)
        return cached  # type: ignore[no-any-return]
