"""DICOM over TLS (PS3.15 B.9, the BCP 195 profile): the SSL contexts of the SCP and the SCUs.

Both directions are TLS 1.2 or later only (``minimum_version = TLSv1_2``; BCP 195
forbids SSL and TLS 1.0/1.1), with OpenSSL's default cipher list at security
level 2. The server presents ``tls_cert_file``; with ``tls_require_client_cert``
it also demands a client certificate signed by a CA of ``tls_ca_file`` (mutual
TLS, PS3.15 B.1 "authenticated"). The SCUs verify the server against the CA.
"""

from __future__ import annotations

import ssl
from pathlib import Path


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
