"""DICOM TLS (PS3.15 B.9, BCP 195): dcmtk's echoscu/storescu +tls against `radnode scp` with
mutual TLS, the refusals (no client certificate, an untrusted one, TLS 1.0/1.1), the plain
port turned off, and radnode's own SCUs (`radnode echo/send --tls`, C-STORE delivery to
Orthanc with DICOM TLS) over TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from pacs_link.outbox import queue_study_results
from pacs_link.scu import AssociationFailed, echo
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.settings import Settings
from radnode_core.tls import client_context
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.processes import free_port
from tests.support.radnode_process import RADNODE, REPO, RadnodeProcess
from tests.support.security import Pki, audit_messages, event_id, make_pki
from tests.support.tools import dcmtk_env, require_tool

# The TLS 1.0/1.1 client of the refusal test uses deprecated protocol versions on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory):
    return write_study(
        StudySpec(region="chest", slices=4, seed=91, rows=64, columns=64),
        tmp_path_factory.mktemp("tls_study"),
    )


def tls_env(pki: Pki, tls_port: int, **extra: str) -> dict[str, str]:
    return {
        "RADNODE_DICOM_TLS_PORT": str(tls_port),
        "RADNODE_TLS_CERT_FILE": str(pki.server_cert),
        "RADNODE_TLS_KEY_FILE": str(pki.server_key),
        "RADNODE_TLS_CA_FILE": str(pki.ca),
        "RADNODE_TLS_REQUIRE_CLIENT_CERT": "true",
        **extra,
    }


class TlsOnlyNode(RadnodeProcess):
    """A radnode whose ``dicom_port`` is its TLS port; ``plain_port`` is the one it leaves
    closed."""

    plain_port: int


def start_tls_only(data_dir: Path, pki: Pki, role: str = "scp") -> TlsOnlyNode:
    """`radnode <role>` with the plain DICOM port off: only the TLS port listens."""
    node = TlsOnlyNode(data_dir, role)
    tls_port = free_port()
    node.env.update(tls_env(pki, tls_port, RADNODE_DICOM_PLAIN="false"))
    node.plain_port = node.dicom_port
    node.dicom_port = tls_port  # --dicom-port is then unused; start() waits for the TLS port
    return node.start()


def dcmtk_tls(pki: Pki, cert: Path | None, key: Path | None) -> list[str]:
    args = ["+cf", str(pki.ca)]
    if cert is not None and key is not None:
        args = ["+tls", str(key), str(cert), *args]
    else:
        args = ["+tla", *args]
    return args


def run_dcmtk(
    tool: str, port: int, *args: str, files: Sequence[Path] = ()
) -> subprocess.CompletedProcess:
    exe = require_tool(tool)
    return subprocess.run(
        [
            exe,
            *args,
            "-aet",
            "MODALITY",
            "-aec",
            "RADNODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
    )


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on (its socket inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_storescu_and_echoscu_over_mutual_tls_store_byte_identical_and_refusals(
    tmp_path: Path, pki: Pki, small_study
) -> None:
    study, files = small_study
    node = start_tls_only(tmp_path / "data", pki)
    try:
        port = node.dicom_port
        assert node.proc is not None
        # The plain port is off: the TLS port is the only one the process listens on.
        assert listening_ports(node.proc.pid) == {port}
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", node.plain_port), timeout=2).close()

        echo = run_dcmtk("echoscu", port, *dcmtk_tls(pki, pki.client_cert, pki.client_key))
        assert echo.returncode == 0, echo.stderr
        sent = run_dcmtk(
            "storescu", port, *dcmtk_tls(pki, pki.client_cert, pki.client_key), files=files
        )
        assert sent.returncode == 0, sent.stderr
        for src in files:
            ds = dcmread(src, stop_before_pixels=True)
            dst = (
                node.data_dir
                / "studies"
                / study.study_instance_uid
                / study.series_instance_uid
                / f"{ds.SOPInstanceUID}.dcm"
            )
            assert dataset_bytes(dst) == dataset_bytes(src)

        # No client certificate while one is required: the handshake is refused.
        anonymous = run_dcmtk("echoscu", port, *dcmtk_tls(pki, None, None))
        assert anonymous.returncode != 0
        # A certificate from a CA the node does not trust: refused too.
        rogue = run_dcmtk("echoscu", port, *dcmtk_tls(pki, pki.rogue_cert, pki.rogue_key))
        assert rogue.returncode != 0
        # Plain DICOM on the TLS port: no association.
        plain = run_dcmtk("echoscu", port)
        assert plain.returncode != 0
    finally:
        node.stop()
    stored = list((node.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == len(files)
    # IHE ATNA Node Authentication Failure: Security Alert (110113) of type 110126
    failures = [m for m in audit_messages(node.data_dir / "audit") if event_id(m) == "110113"]
    assert len(failures) >= 2  # the anonymous and the rogue client
    for m in failures:
        assert "TLS" in (m.findtext("EventIdentification/EventOutcomeDescription") or "")
        assert m.find("EventIdentification/EventTypeCode[@csd-code='110126']") is not None


def _old_tls_client_works_at_all(version: ssl.TLSVersion, pki: Pki) -> bool:
    """Control: can this Python/OpenSSL speak ``version`` to a server that allows it?"""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    import threading

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        _old_client(version, pki, port)
        return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        listener.close()


def _old_client(version: ssl.TLSVersion, pki: Pki, port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(tmp_path: Path, pki: Pki, version: ssl.TLSVersion) -> None:
    """dcmtk 3.6.7 offers only the BCP 195 profiles (TLS 1.2+), so the old versions are
    offered by Python's ssl client (with a valid client certificate)."""
    if not _old_tls_client_works_at_all(version, pki):
        pytest.skip(f"this OpenSSL cannot speak {version.name} even to a permissive server")
    node = start_tls_only(tmp_path / "data", pki)
    try:
        with pytest.raises(ssl.SSLError):
            _old_client(version, pki, node.dicom_port)
        # TLS 1.2 with the same client certificate goes through.
        assert _old_client(ssl.TLSVersion.TLSv1_2, pki, node.dicom_port) == "TLSv1.2"
    finally:
        node.stop()


def test_radnode_echo_and_send_over_tls(tmp_path: Path, pki: Pki, small_study) -> None:
    study, files = small_study
    node = start_tls_only(tmp_path / "data", pki)
    tls = ["--tls", "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    tls += ["--tls-key", str(pki.client_key)]
    peer = ["--port", str(node.dicom_port), "--aet", "MODALITY", "--called-aet", "RADNODE"]
    try:
        echo = subprocess.run(
            [*RADNODE, "echo", *peer, *tls], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert echo.returncode == 0 and "status 0x0000" in echo.stdout, echo.stderr
        send = subprocess.run(
            [*RADNODE, "send", *peer, *tls, *map(str, files)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert send.returncode == 0, send.stderr
        assert f"sent {len(files)}/{len(files)}" in send.stdout
        # Without our client certificate the association fails: exit status 1, not a hang.
        no_cert = subprocess.run(
            [*RADNODE, "echo", *peer, "--tls", "--tls-ca", str(pki.ca)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert no_cert.returncode != 0
        # A CA and certificate without --tls still mean TLS (never the clear by omission).
        implied = subprocess.run(
            [*RADNODE, "echo", *peer, *tls[1:]], capture_output=True, text=True, cwd=REPO,
            timeout=60,
        )
        assert implied.returncode == 0 and "status 0x0000" in implied.stdout, implied.stderr
    finally:
        node.stop()
    assert len(list((node.data_dir / "studies" / study.study_instance_uid).rglob("*.dcm"))) == len(
        files
    )


def test_cstore_delivery_to_orthanc_over_dicom_tls(tmp_path: Path, pki: Pki, small_study) -> None:
    """pacs_link's C-STORE delivery to a real Orthanc with DICOM TLS and client certificates
    required (Orthanc's DicomTls* options)."""
    study, files = small_study
    # Orthanc needs its certificate and key in separate files; its trusted list is our CA.
    tls_config = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server_cert),
        "DicomTlsPrivateKey": str(pki.server_key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with OrthancPacs(tmp_path / "orthanc", extra=tls_config) as orthanc:
        peer = orthanc.peer(
            delivery="cstore",
            dicom_tls=True,
            tls_ca_file=pki.ca,
            tls_cert_file=pki.client_cert,
            tls_key_file=pki.client_key,
        )
        node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
        try:
            for f in files:
                node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
            queue_study_results(node, study.study_instance_uid, None)
            sender = OutboxSender(node)
            assert sender.run_once() == len(files)
            assert sender.outbox.counts() == {("orthanc", "delivered"): len(files)}
        finally:
            node.close()
        assert len(orthanc.get_json("/instances")) == len(files)
        orthanc_host = "127.0.0.1"
        # Orthanc's DICOM port is TLS only, and it wants our client certificate.
        with pytest.raises(AssociationFailed):
            echo(orthanc_host, orthanc.dicom_port, "RADNODE", "ORTHANC", timeout=10)
        with pytest.raises(AssociationFailed):
            echo(
                orthanc_host,
                orthanc.dicom_port,
                "RADNODE",
                "ORTHANC",
                timeout=10,
                tls=client_context(pki.ca),
            )
        ok = client_context(pki.ca, pki.client_cert, pki.client_key)
        assert echo(orthanc_host, orthanc.dicom_port, "RADNODE", "ORTHANC", tls=ok) == 0
