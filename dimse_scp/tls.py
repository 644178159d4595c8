"""The DICOM TLS association server (PS3.15 B.9); its contexts come from :mod:`radnode_core.tls`.

pynetdicom's server wraps each accepted socket on its one accept thread, so a
client that connects and never finishes the handshake would stall every other
client. :class:`TlsAssociationServer` does the handshake in the association's
own thread, bounded by ``tls_handshake_timeout_s``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

from dimse_scp.negotiation import GuardedAssociationServer

logger = logging.getLogger(__name__)

HandshakeFailed = Callable[[str, str], None]
"""Called with (peer address, reason) when a client's TLS handshake fails."""


class TlsAssociationServer(GuardedAssociationServer):
    """The guarded threaded server with the TLS handshake moved into the association thread
    (the handshake counts towards the association request's deadline)."""

    handshake_timeout_s: float = 10.0
    on_handshake_failed: HandshakeFailed | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.ssl_context is not None
        raw, address = self.accept()
        wrapped = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        assert isinstance(request, ssl.SSLSocket)
        peer = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        try:
            request.settimeout(self.handshake_timeout_s)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError, timeout, reset
            reason = str(getattr(exc, "reason", None) or type(exc).__name__)
            # A client that spoke TLS and was refused (no or an untrusted certificate, an
            # old protocol) is a failed login; a bare connect that closes or says nothing
            # (a port probe) is not worth an audit record.
            refused = isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError)
            logger.log(
                logging.WARNING if refused else logging.INFO,
                "TLS handshake failed",
                extra={"peer": peer, "reason": reason},
            )
            if refused and self.on_handshake_failed is not None:
                self.on_handshake_failed(peer, reason)
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)
