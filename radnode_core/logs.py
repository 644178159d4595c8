"""Structured logging without patient names.

Log records are JSON lines (or plain text for a terminal). Fields passed with
``extra=`` become JSON keys; keys that can carry patient identity are dropped
before formatting, so a patient name never lands in an ordinary log (the audit
trail is a separate, access-controlled channel).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

# Keys never written to ordinary logs, whatever a caller passes in `extra`.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "PatientName",
        "patient_birth_date",
        "PatientBirthDate",
        "referring_physician_name",
        "ReferringPhysicianName",
        "OtherPatientNames",
        "PatientAddress",
    }
)

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and key not in PHI_KEYS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _extra_fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once per process (the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG and can echo identifiers: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # Alembic logs its context at INFO whenever a schema is checked; radnode_core.schema
    # logs what an upgrade did.
    for noisy in ("uvicorn.access", "tensorflow", "absl", "h5py", "PIL", "highdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
