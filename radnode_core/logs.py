"""Structured logging without patient names.

Log records are JSON lines (or plain text for a terminal). Fields passed with
``extra=`` become JSON keys; keys that can carry patient identity are dropped
before formatting, so a patient name never lands in an ordinary log (the audit
trail is a separate, access-controlled channel).

Libraries speak in their own words: pydicom, highdicom and pynetdicom quote element
values in warnings and log messages (highdicom's "The string "Doe" is unlikely to
represent the intended person name", pydicom's "Invalid value for VR PN: 'Doe=A=B=C'").
Python warnings are routed into logging (``py.warnings``), and in every record of those
loggers quoted text is replaced by ``<value>`` before it is formatted. An exception that
ends a thread (pynetdicom's network threads raise on some malformed requests) would be
printed by Python straight to stderr; it is logged instead, its traceback redacted the
same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
import traceback
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


LIBRARY_LOGGERS = ("py.warnings", "pydicom", "highdicom", "pynetdicom")
"""Loggers whose message text may quote a DICOM element value."""

_QUOTED = re.compile(r""""[^"\n]*"|'[^'\n]*'|`[^`\n]*`""")


def redact_quoted(text: str) -> str:
    """Text with every quoted part (single, double or back quotes) replaced by ``<value>``."""
    return _QUOTED.sub("<value>", text)


class LibraryValueFilter(logging.Filter):
    """Drops quoted values from the messages of :data:`LIBRARY_LOGGERS` (patient names)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(record.name == n or record.name.startswith(n + ".") for n in LIBRARY_LOGGERS):
            record.msg = redact_quoted(record.getMessage())
            record.args = None
            if record.exc_info:  # an exception's text can quote a value as well
                trace = "".join(traceback.format_exception(*record.exc_info))
                record.exc_text = redact_quoted(trace)
                record.exc_info = None
        return True


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
        elif record.exc_text:
            entry["exc"] = record.exc_text
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


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: an uncaught exception in a thread, logged with its
    traceback's quoted parts redacted (it may quote an element value)."""
    if args.exc_type is SystemExit:
        return
    trace = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    logging.getLogger("radnode_core.threads").error(
        "uncaught exception in a thread",
        extra={
            "thread_name": args.thread.name if args.thread is not None else None,
            "error": args.exc_type.__name__,
            "exc": redact_quoted(trace),
        },
    )


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once per process (the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(LibraryValueFilter())
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger, filtered
    threading.excepthook = log_thread_exception
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG and can echo identifiers: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # Alembic logs its context at INFO whenever a schema is checked; radnode_core.schema
    # logs what an upgrade did.
    for noisy in ("uvicorn.access", "tensorflow", "absl", "h5py", "PIL", "highdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
