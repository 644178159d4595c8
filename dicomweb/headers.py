"""Headers of stored instances for QIDO-RS ``includefield`` and WADO-RS metadata.

Read with ``stop_before_pixels`` and kept in a small LRU cache keyed by the
file's path and the time the index recorded it (``received_at``): a replaced
instance (duplicate policy ``replace``) gets a new time, so a new entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

Key = tuple[str, float]
"""(store-relative or absolute path, the index's received_at of that file's version)"""


class HeaderCache:
    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Key, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Key, value: Any) -> None:
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

    def dataset(self, path: Path, version: float) -> Dataset:
        """The header of the file at ``path``; ``version`` (its received_at) keys the cache,
        so a replaced instance (duplicate policy ``replace``) is read again."""
        key = (str(path), float(version))
        cached = self.datasets.get(key)
        if cached is None:
            cached = read_header(path)
            for _ in cached:  # convert every raw element now: reads never mutate it later
                pass
            self.datasets.put(key, cached)
        return cached  # type: ignore[no-any-return]
