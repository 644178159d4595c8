"""An exception that ends a thread (pynetdicom's network threads raise on some malformed
requests) is logged as a JSON line with its traceback's quoted values redacted, not
printed raw to stderr where a patient name it quotes would land."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import threading
from radnode_core.logs import configure_logging

configure_logging()

def fail():
    raise ValueError("Invalid value for VR PN: 'Doe^Jane'")

thread = threading.Thread(target=fail, name="dul-thread")
thread.start()
thread.join()
print("still running")
"""


def test_a_thread_dying_with_a_patient_name_in_its_error_logs_it_redacted() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "still running"
    assert "Doe" not in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stderr
    entry = lines[0]
    assert entry["level"] == "error"
    assert entry["logger"] == "radnode_core.threads"
    assert entry["thread_name"] == "dul-thread"
    assert entry["error"] == "ValueError"
    assert "Invalid value for VR PN: <value>" in entry["exc"]
    assert "Traceback" in entry["exc"]
