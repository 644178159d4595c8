"""DICOM over TLS (PS3.15 B.9, the BCP 195 profile): contexts and the TLS association server.

Both directions are TLS 1.2 or later only (``minimum_version = TLSv1_2``; BCP 195
forbids SSL and TLS 1.0/1.1), with OpenSSL's default cipher list at security
level 2. The server presents ``tls_cert_file``; with ``tls_require_client_cert``
it also demands a client certificate signed by a CA of ``tls_ca_file`` (mutual
TLS, PS3.15 B.1 "authenticated"). The SCUs verify the server against the CA.

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
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)

HandshakeFailed = Callable[[str, str], None]
"""Called with (peer address, reason) when a client's TLS handshake fails."""


def _restrict(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME; BCP 195 3.3
    return context


def server_context(
    cert_file: Path, key_file: Path, ca_file: Path | None, require_client_cert: bool
) -> ssl.SSLContext:
    """The SCP's context: its certificate, and the CA that client certificates must chain to."""
    context = _restrict(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(str(cert_file), str(key_file))
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """An SCU's context: verify the peer against ``ca_file`` (system CAs when None), and
    present ``cert_file`` when the peer asks for a client certificate."""
    context = _restrict(
        ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    )
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return context


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved into the association thread."""

    handshake_timeout_s: float = 10.0
    on_handshake_failed: HandshakeFailed | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        raw, address = self.socket.accept()
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
