"""The Orthanc plugin's module, driven by a fake ``orthanc`` module and a real HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tests.support.wait import wait_for
from viewer_plugin.orthanc_notify import RadnodeTarget, StableStudyNotifier, register


class FakeOrthanc:
    """What the plugin uses of the ``orthanc`` module."""

    ChangeType = SimpleNamespace(NEW_INSTANCE=1, STABLE_STUDY=7)

    def __init__(self, config: dict) -> None:
        self.config = config
        self.callbacks: list = []
        self.logs: list[str] = []

    def GetConfiguration(self) -> str:  # noqa: N802 - the orthanc module's names
        return json.dumps(self.config)

    def RegisterOnChangeCallback(self, callback) -> None:  # noqa: N802
        self.callbacks.append(callback)

    def RestApiGet(self, uri: str) -> bytes:  # noqa: N802
        orthanc_id = uri.rsplit("/", 1)[1]
        return json.dumps(
            {"MainDicomTags": {"StudyInstanceUID": f"1.2.3.{len(orthanc_id)}"}}
        ).encode()

    def LogWarning(self, text: str) -> None:  # noqa: N802
        self.logs.append(text)

    LogError = LogWarning


class Receiver(BaseHTTPRequestHandler):
    posts: list = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Receiver.fail_first > 0:
            Receiver.fail_first -= 1
            self.send_response(503)
        else:
            Receiver.posts.append((self.path, self.headers.get("Authorization"), body))
            self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    Receiver.posts, Receiver.fail_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def wait_posts(n: int) -> list:
    return wait_for(lambda: Receiver.posts if len(Receiver.posts) >= n else None, timeout=20,
                    what=f"{n} POST(s) to radnode", interval=0.02)


def test_stable_study_is_posted_once_other_changes_ignored(receiver) -> None:
    orthanc = FakeOrthanc({"Radnode": {"Url": receiver, "Token": "t0k", "Peer": "pacs"}})
    notifier = register(orthanc)
    try:
        [callback] = orthanc.callbacks
        callback(orthanc.ChangeType.NEW_INSTANCE, 3, "aaaa-1111")
        callback(orthanc.ChangeType.STABLE_STUDY, 1, "bbbbbbbb-2222")  # queues, no I/O
        [(path, auth, body)] = wait_posts(1)
    finally:
        notifier.stop()
    assert path == "/api/pacs/pacs/stable-studies" and auth == "Bearer t0k"
    assert body == {"orthanc_id": "bbbbbbbb-2222", "study_uid": "1.2.3.13"}


def test_radnode_unavailable_is_retried_with_backoff(receiver) -> None:
    Receiver.fail_first = 2
    orthanc = FakeOrthanc({})
    notifier = StableStudyNotifier(orthanc, RadnodeTarget(url=receiver), backoff_s=0.05)
    notifier.start()
    try:
        notifier.on_change(orthanc.ChangeType.STABLE_STUDY, 1, "cccccccc-3333")
        [(_, auth, body)] = wait_posts(1)
    finally:
        notifier.stop()
    assert auth is None and body["orthanc_id"] == "cccccccc-3333"
    assert len([m for m in orthanc.logs if "503" in m]) == 2


def test_missing_radnode_section_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match='"Radnode"'):
        register(FakeOrthanc({}))
