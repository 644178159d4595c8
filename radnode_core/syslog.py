"""Audit messages to an audit record repository: syslog (RFC 5424) over TLS (RFC 5425).

PS3.15 A.6 / IHE ATNA: each DICOM audit message is the MSG of one RFC 5424
message (facility 10 security/authorization, severity 5 notice, MSGID
``DICOM+RFC3881``, MSG a UTF-8 BOM and the XML), framed by octet counting
(``MSG-LEN SP SYSLOG-MSG``, RFC 5425 4.3) on a TLS 1.2+ connection verified
against the repository's CA.

Sending never blocks the audited action: messages go into a bounded queue and a
thread sends them, reconnecting with backoff. The local log is the record of
truth; a message the repository could not take is dropped from the queue when it
is full, and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import ssl
import threading

from radnode_core.settings import Settings
from radnode_core.tls import client_context

logger = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
MSGID = "DICOM+RFC3881"
BOM = b"\xef\xbb\xbf"


def frame(
    message: bytes, *, hostname: str, app_name: str = "radnode", procid: str | None = None
) -> bytes:
    """One RFC 5424 syslog message carrying ``message``, octet-counted for RFC 5425."""
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE
    timestamp = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{pri}>1 {timestamp} {hostname[:255] or '-'} {app_name[:48]} "
    header += f"{(procid or str(os.getpid()))[:128]} {MSGID} - "
    syslog_msg = header.encode("ascii", "replace") + BOM + message
    return str(len(syslog_msg)).encode() + b" " + syslog_msg


class SyslogSender:
    """A background sender of audit messages over one TLS (or, for tests, TCP) connection."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        *,
        queue_size: int = 10000,
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.timeout_s = timeout_s
        self.hostname = socket.gethostname()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.sent = 0
        self.dropped = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SyslogSender:
        assert settings.audit_syslog_host
        context = None
        if settings.audit_syslog_tls:
            context = client_context(
                settings.audit_syslog_ca_file or settings.tls_ca_file,
                settings.tls_cert_file,
                settings.tls_key_file,
            )
        return cls(settings.audit_syslog_host, settings.audit_syslog_port, context)

    def send(self, message: bytes) -> None:
        try:
            self._queue.put_nowait(frame(message, hostname=self.hostname))
        except queue.Full:
            self.dropped += 1
            logger.warning("audit syslog queue full: message kept only in the local log")

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        if self.context is None:
            return raw
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _run(self) -> None:
        conn: socket.socket | None = None
        backoff = 0.5
        pending: bytes | None = None
        while True:
            if pending is None:
                item = self._queue.get()
                if item is None:
                    break
                pending = item
            try:
                if conn is None:
                    conn = self._connect()
                conn.sendall(pending)
                self.sent += 1
                pending = None
                backoff = 0.5
            except OSError as exc:
                logger.warning(
                    "audit syslog send failed, retrying",
                    extra={"host": self.host, "port": self.port, "error": type(exc).__name__},
                )
                if conn is not None:
                    conn.close()
                    conn = None
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 30.0)
        if conn is not None:
            conn.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="radnode-audit-syslog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then close."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._stop.set()
