"""C-MOVE to a destination over DICOM TLS (PS3.15 B.9): dcmtk storescp +tls requiring a
client certificate receives the study; a destination whose certificate radnode does not
trust gets nothing (0xA801, the association failed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from ai_node.synth import StudySpec, write_study
from tests.support.processes import free_port, stop_process, wait_port
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import Pki, make_pki
from tests.support.tools import dcmtk_env, require_tool, storescu


def _tls_storescp(pki: Pki, out: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            require_tool("storescp"),
            "+tls",
            str(pki.server_key),
            str(pki.server_cert),
            "+cf",
            str(pki.ca),
            "-aet",
            "SECURE",
            "-od",
            str(out),
            str(port),
        ],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


def _move(port: int, study_uid: str) -> Dataset:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        *_, (final, _) = assoc.send_c_move(
            identifier, "SECURE", StudyRootQueryRetrieveInformationModelMove
        )
    finally:
        assoc.release()
    return final


def test_c_move_to_a_tls_destination(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    stranger = make_pki(tmp_path / "other-pki")
    study, files = write_study(
        StudySpec(region="chest", slices=3, seed=93, rows=32, columns=32), tmp_path / "in"
    )
    out = tmp_path / "received"
    out.mkdir()
    storescp, port = _tls_storescp(pki, out)
    destinations = json.dumps(
        [{"ae_title": "SECURE", "host": "127.0.0.1", "port": port, "tls": True}]
    )
    trusted = RadnodeProcess(
        tmp_path / "data",
        "scp",
        env={
            "RADNODE_MOVE_DESTINATIONS": destinations,
            "RADNODE_TLS_CA_FILE": str(pki.ca),
            "RADNODE_TLS_CERT_FILE": str(pki.client_cert),
            "RADNODE_TLS_KEY_FILE": str(pki.client_key),
        },
    )
    untrusting = RadnodeProcess(
        tmp_path / "data2",
        "scp",
        env={
            "RADNODE_MOVE_DESTINATIONS": destinations,
            "RADNODE_TLS_CA_FILE": str(stranger.ca),
            "RADNODE_TLS_CERT_FILE": str(pki.client_cert),
            "RADNODE_TLS_KEY_FILE": str(pki.client_key),
        },
    )
    try:
        for node in (trusted, untrusting):
            node.start()
            assert storescu(node.dicom_port, files).returncode == 0
        final = _move(trusted.dicom_port, study.study_instance_uid)
        assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == len(files)
        received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.iterdir()}
        assert received == {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
        assert _move(untrusting.dicom_port, study.study_instance_uid).Status == 0xA801
        assert len(list(out.iterdir())) == len(files)
    finally:
        trusted.stop()
        untrusting.stop()
        stop_process(storescp)
