"""The PACS over HTTPS: radnode's TLS options verify a self-signed certificate, STOW-RS and
the changes feed go through; without the CA the connection check names the TLS failure.

Debian's Orthanc 1.10 crashes on its first HTTPS connection (its civetweb with OpenSSL 3:
a NULL call in a civetweb worker), so TLS is terminated in front of it, as a hospital's
reverse proxy would: a small TLS forwarder to Orthanc's plain HTTP port."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from pacs_link import client
from pacs_link.outbox import queue_study_results
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count
from tests.support.processes import free_port


def self_signed(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radnode-test-pacs")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ca, both = tmp_path / "ca.pem", tmp_path / "orthanc.pem"
    ca.write_bytes(cert_pem)
    both.write_bytes(cert_pem + key_pem)
    return ca, both


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tls_terminator(cert_and_key: Path, backend_port: int) -> Iterator[int]:
    """HTTPS on a free loopback port, forwarded to 127.0.0.1:backend_port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_and_key))
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                client = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()  # the client refused our certificate
                continue
            backend = socket.create_connection(("127.0.0.1", backend_port))
            threading.Thread(target=_pipe, args=(client, backend), daemon=True).start()
            threading.Thread(target=_pipe, args=(backend, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()


def test_stow_and_changes_over_https_with_the_ca_and_a_clear_error_without(tmp_path) -> None:
    ca, both = self_signed(tmp_path)
    study, files = write_study(
        StudySpec(region="chest", slices=3, seed=81, rows=32, columns=32), tmp_path / "in"
    )
    with (
        OrthancPacs(tmp_path / "orthanc") as orthanc,
        tls_terminator(both, orthanc.http_port) as https_port,
    ):
        url = f"https://127.0.0.1:{https_port}/dicom-web"
        untrusted = orthanc.peer(dicomweb_url=url)
        error = client.check(untrusted)
        assert error is not None and "TLS failed" in error, error
        peer = orthanc.peer(dicomweb_url=url, tls_ca_file=ca)
        assert client.check(peer) is None
        assert client.orthanc(peer).get_json("changes?last")["Last"] >= 0
        node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
        try:
            for f in files:
                node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
            queue_study_results(node, study.study_instance_uid, None)
            assert OutboxSender(node).run_once() == len(files)
        finally:
            node.close()
        assert instance_count(orthanc, study.study_instance_uid) == len(files)
