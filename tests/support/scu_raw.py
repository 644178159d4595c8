"""Send hand-made (often broken) C-STORE payloads with pynetdicom, bytes as given."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


@contextmanager
def association(port: int, contexts: list[tuple[str, str]], aet: str = "TESTSCU",
                called: str = "RADNODE") -> Iterator[Association]:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_raw_files(port: int, files: list[Path], contexts: list[tuple[str, str]],
                   **kw: str) -> list[int]:
    """C-STORE each Part 10 file's dataset bytes exactly as they are in the file."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(port, contexts, **kw) as assoc:
            assert assoc.is_established, "association not established"
            statuses = []
            for path in files:
                rsp = assoc.send_c_store(path)
                statuses.append(int(rsp.Status) if "Status" in rsp else -1)
            echo = assoc.send_c_echo()
            assert echo.Status == 0x0000  # the association is still healthy
            return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def settle(assoc: Any, timeout_s: float = 1.0) -> None:
    """Wait until a requested association's reactor has resumed after the last request.

    pynetdicom (3.0) pauses that reactor while a request waits for its responses; a
    request sent before the reactor has woken from the previous one can lose its response
    to it ("Received unexpected C-STORE service message") and wait out the DIMSE timeout.
    Senders that measure the peer call this between requests.
    """
    deadline = time.monotonic() + timeout_s
    while assoc.is_established and assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
