"""Request timeouts of the HTTP edge: a client gets ``http_request_timeout_s`` to send a
request's line and headers, on a new connection and on a kept-alive one.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no timer
on a connection that opens and then sends nothing, or sends its headers a byte at a
time (slowloris): each would hold a connection for ever. This h11 protocol arms a
timer whenever the server waits for a request's headers and closes the connection
when it fires. Bodies are bounded where they are read (STOW-RS: time between chunks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class TimedH11Protocol(H11Protocol):
    header_timeout_s: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = self.client[0] if self.client else None
            logger.info("HTTP request headers not received in time", extra={"client": client})
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(header_timeout_s: float) -> type[Any]:
    """The protocol class for ``uvicorn.run(http=...)`` with this timeout."""
    return type("RadnodeH11Protocol", (TimedH11Protocol,), {"header_timeout_s": header_timeout_s})
