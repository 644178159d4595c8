"""Tell radnode about each stable study from inside Orthanc (the Orthanc Python plugin).

Runs in the interpreter the Debian ``orthanc-python`` plugin embeds (Debian's own
Python 3.11, not radnode's virtualenv): standard library only. The ``orthanc``
module is passed in, so tests drive it with a fake.

Orthanc calls the change callback on its own threads and holds the GIL shared by
every callback, so the callback only puts the study's Orthanc ID on a queue and
returns; a daemon thread reads the study's UID (``orthanc.RestApiGet``) and POSTs
it to radnode's ``/api/pacs/{peer}/stable-studies``, retrying with backoff while
radnode is unreachable (a lost notification is then caught up by radnode's
``/changes`` follower, if it runs).

Configuration, in Orthanc's configuration file::

    "Radnode": {"Url": "http://radnode-api:8080", "Token": "<bearer>", "Peer": "orthanc"}
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class RadnodeTarget:
    url: str
    peer: str = "orthanc"
    token: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_orthanc_config(cls, config: dict[str, Any]) -> RadnodeTarget:
        section = config.get("Radnode") or {}
        if not section.get("Url"):
            raise ValueError('the Orthanc configuration has no "Radnode": {"Url": ...} section')
        return cls(
            url=str(section["Url"]).rstrip("/"),
            peer=str(section.get("Peer", "orthanc")),
            token=section.get("Token"),
        )


class StableStudyNotifier:
    """The callback (``on_change``) and the thread that posts to radnode."""

    def __init__(self, orthanc: Any, target: RadnodeTarget, backoff_s: float = 1.0) -> None:
        self.orthanc = orthanc
        self.target = target
        self.backoff_s = backoff_s
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.sent: deque[str] = deque(maxlen=100)  # the latest studies posted
        self._thread: threading.Thread | None = None

    def on_change(self, change_type: Any, level: Any, resource_id: str) -> None:
        """Orthanc's change callback: returns at once (no I/O on Orthanc's thread)."""
        if change_type == self.orthanc.ChangeType.STABLE_STUDY:
            self.pending.put(resource_id)

    def notify(self, orthanc_id: str) -> None:
        """POST one stable study to radnode; raises on failure (the loop retries)."""
        study = json.loads(self.orthanc.RestApiGet(f"/studies/{orthanc_id}"))
        body = json.dumps(
            {
                "orthanc_id": orthanc_id,
                "study_uid": study.get("MainDicomTags", {}).get("StudyInstanceUID"),
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        request = urllib.request.Request(
            f"{self.target.url}/api/pacs/{self.target.peer}/stable-studies",
            data=body,
            headers=headers,
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.target.timeout_s) as response:
            response.read()

    def run(self) -> None:
        while True:
            orthanc_id = self.pending.get()
            if orthanc_id is None:
                return
            delay = self.backoff_s
            while True:
                try:
                    self.notify(orthanc_id)
                    self.sent.append(orthanc_id)
                    break
                except urllib.error.HTTPError as exc:
                    if 400 <= exc.code < 500 and exc.code not in (401, 403, 429):
                        self.orthanc.LogError(f"radnode refused study {orthanc_id}: {exc}")
                        break
                    self.orthanc.LogWarning(f"radnode: {exc}; retrying in {delay:.0f} s")
                except Exception as exc:  # noqa: BLE001 - unreachable radnode, Orthanc hiccup
                    self.orthanc.LogWarning(
                        f"radnode unreachable: {exc}; retrying in {delay:.0f} s"
                    )
                time.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="radnode-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.pending.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)


def register(orthanc: Any) -> StableStudyNotifier:
    """What the entry script calls: read the config, start the thread, register the callback."""
    target = RadnodeTarget.from_orthanc_config(json.loads(orthanc.GetConfiguration()))
    notifier = StableStudyNotifier(orthanc, target)
    notifier.start()
    orthanc.RegisterOnChangeCallback(notifier.on_change)
    orthanc.LogWarning(f"radnode notifier: stable studies go to {target.url} as {target.peer}")
    return notifier
