"""The audit trail (PS3.15 A.5): every store, query, retrieve, feedback and failed login of a
whole `radnode serve` run has its message, each valid against the schema's structure; the
patient's name and ID appear in the audit log and in no ordinary log line. Export has its
message; the messages reach a real rsyslog over TLS (RFC 5425)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import httpx

from ai_node.synth import StudySpec, write_study
from radnode.assembly import build_node
from radnode_core.audit import AuditTrail, StudyRef
from radnode_core.settings import Settings
from radnode_core.syslog import SyslogSender
from tests.support.processes import free_port, wait_port
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import (
    RELATED,
    audit_messages,
    check_audit_schema,
    child,
    event_id,
    make_pki,
    outcome,
    stow_body,
    study_uids,
)
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for

RADIOLOGIST = "rad-token-audit-0123456789"
MODALITY = "modality-token-audit-0123456789"
NAME_A, ID_A = "Sentinelname^Alpha", "PHIALPHA77"
NAME_B, ID_B = "Sentinelname^Bravo", "PHIBRAVO88"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_result(base: str, study_uid: str, timeout: float = 240) -> dict:
    def result() -> dict | None:
        r = httpx.get(f"{base}/api/studies/{study_uid}/result", headers=_auth(RADIOLOGIST))
        if r.status_code == 200 and r.json().get("status") in ("done", "out_of_scope"):
            return r.json()
        return None

    return wait_for(result, timeout=timeout, what=f"the AI result of {study_uid}", interval=0.5)


def test_whole_run_is_audited_and_no_patient_name_reaches_the_ordinary_log(tmp_path: Path) -> None:
    study_a, files_a = write_study(
        StudySpec(
            region="chest",
            slices=16,
            nodules=1,
            seed=5,
            rows=128,
            columns=128,
            patient_name=NAME_A,
            patient_id=ID_A,
        ),
        tmp_path / "a",
    )
    study_b, files_b = write_study(
        StudySpec(
            region="chest",
            slices=3,
            seed=6,
            rows=32,
            columns=32,
            patient_name=NAME_B,
            patient_id=ID_B,
        ),
        tmp_path / "b",
    )
    env = {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps({RADIOLOGIST: "radiologist", MODALITY: "modality"}),
        "RADNODE_RADIOLOGIST_NAMES": json.dumps({RADIOLOGIST: "Doe^Jane"}),
        "RADNODE_FSYNC": "false",
        "RADNODE_LOG_LEVEL": "DEBUG",  # the most the ordinary log ever says
    }
    node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        # Store: C-STORE (study A) and STOW-RS (study B).
        sent = storescu(node.dicom_port, files_a)
        assert sent.returncode == 0, sent.stderr
        stow = httpx.post(
            f"{base}/dicom-web/studies",
            content=stow_body(*(p.read_bytes() for p in files_b)),
            headers={"Content-Type": RELATED, **_auth(MODALITY)},
            timeout=60,
        )
        assert stow.status_code == 200, stow.text
        # A refused association (wrong called AE) and two refused bearer tokens.
        echo = subprocess.run(
            [
                require_tool("echoscu"),
                "-aet",
                "MODALITY",
                "-aec",
                "NOTRADNODE",
                "127.0.0.1",
                str(node.dicom_port),
            ],
            capture_output=True,
            env=dcmtk_env(),
            timeout=60,
        )
        assert echo.returncode != 0
        assert httpx.get(f"{base}/dicom-web/studies").status_code == 401
        assert httpx.get(f"{base}/dicom-web/studies", headers=_auth("wrong")).status_code == 401
        # Query by patient name, retrieve study A, judge its AI result.
        found = httpx.get(
            f"{base}/dicom-web/studies",
            params={"PatientName": "Sentinelname*"},
            headers=_auth(RADIOLOGIST),
        )
        assert found.status_code == 200 and len(found.json()) == 2
        wado = httpx.get(
            f"{base}/dicom-web/studies/{study_a.study_instance_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"', **_auth(RADIOLOGIST)},
            timeout=60,
        )
        assert wado.status_code == 200
        _wait_result(base, study_a.study_instance_uid)
        judged = httpx.post(
            f"{base}/api/studies/{study_a.study_instance_uid}/feedback",
            json={"decision": "confirm"},
            headers=_auth(RADIOLOGIST),
            timeout=60,
        )
        assert judged.status_code == 201, judged.text
    finally:
        assert node.stop() == 0

    # Every file of the run (received, the AI SR, the feedback SR) has a zero preamble.
    files = list((node.data_dir / "studies").rglob("*.dcm"))
    assert len(files) >= len(files_a) + len(files_b) + 2
    assert all(f.read_bytes()[:132] == b"\0" * 128 + b"DICM" for f in files)

    messages = audit_messages(node.data_dir / "audit")
    for m in messages:
        check_audit_schema(m)
    by_event: dict[tuple[str, str], list] = {}
    for m in messages:
        action = child(m, "EventIdentification").attrib["EventActionCode"]
        by_event.setdefault((event_id(m), action), []).append(m)

    stored = by_event[("110104", "C")]
    # One message per association/request and study, not per instance.
    assert sorted(study_uids(m)[0] for m in stored) == sorted(
        [study_a.study_instance_uid, study_b.study_instance_uid]
    )
    cstore = next(m for m in stored if study_uids(m) == [study_a.study_instance_uid])
    assert outcome(cstore) == "0"
    source = cstore.find("ActiveParticipant")
    assert source.attrib["UserID"] == "MODALITY"
    assert source.attrib["NetworkAccessPointID"] == "127.0.0.1"
    sop = cstore.find("ParticipantObjectIdentification/SOPClass")
    assert sop.attrib["NumberOfInstances"] == str(len(files_a))
    patient = cstore.find("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']")
    assert patient.attrib["ParticipantObjectID"] == ID_A
    assert patient.findtext("ParticipantObjectName") == NAME_A

    logins = by_event[("110114", "E")]
    assert len(logins) == 3 and {outcome(m) for m in logins} == {"4"}
    assert all(
        child(m, "EventIdentification/EventTypeCode").attrib["csd-code"] == "110122" for m in logins
    )

    queries = by_event[("110112", "E")]
    query = queries[-1].findtext("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert "PatientName=Sentinelname" in base64.b64decode(query).decode()
    assert all(outcome(m) == "0" for m in queries)

    retrieved = by_event[("110104", "R")]
    assert any(study_uids(m) == [study_a.study_instance_uid] for m in retrieved)
    assert (
        child(retrieved[0], "ActiveParticipant[@UserIsRequestor='true']").attrib["UserID"]
        == "Doe^Jane"
    )

    feedback = by_event[("110103", "C")]
    assert [study_uids(m) for m in feedback] == [[study_a.study_instance_uid]]

    # The patients are in the audit log ... and nowhere in the ordinary log.
    audit_text = "".join(p.read_text() for p in (node.data_dir / "audit").glob("*.log"))
    assert NAME_A in audit_text and NAME_B in audit_text and ID_A in audit_text
    log = node.log()
    assert "association rejected" in log and "http request" in log  # it did log
    for secret in (NAME_A, NAME_B, ID_A, ID_B, "Sentinelname", NAME_A.replace("^", " ")):
        assert secret not in log, f"{secret!r} in the ordinary log"


def test_export_and_failed_store_messages(tmp_path: Path) -> None:
    """audit.export (for the training code) and a transfer of which nothing was stored."""
    node = build_node(Settings(data_dir=tmp_path / "data", fsync=False))
    try:
        node.audit.export(
            [StudyRef("1.2.3.4", {"1.2.840.10008.5.1.4.1.1.2": 12}), "1.2.3.5"],
            destination="training-set-2026-11",
        )
        node.audit.instances_failed(source_user="MODALITY", source_address="10.0.0.9", refused=3)
    finally:
        node.close()
    export, failed = audit_messages(tmp_path / "data" / "audit")
    for m in (export, failed):
        check_audit_schema(m)
    assert event_id(export) == "110106" and outcome(export) == "0"
    assert child(export, "EventIdentification").attrib["EventActionCode"] == "R"
    assert study_uids(export) == ["1.2.3.4", "1.2.3.5"]
    media = export.find("ActiveParticipant/RoleIDCode[@csd-code='110154']")
    assert media is not None
    assert event_id(failed) == "110104" and outcome(failed) == "8"


def test_audit_disabled_writes_nothing(tmp_path: Path) -> None:
    trail = AuditTrail.from_settings(
        Settings(data_dir=tmp_path / "data", audit_enabled=False), None
    )
    trail.query(user="u", address=None, path="/dicom-web/studies", query="")
    trail.close()
    assert not (tmp_path / "data" / "audit").exists()


RSYSLOG_CONF = """
global(workDirectory="{work}"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
global(maxMessageSize="64k")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="fields" type="string" string="%pri%|%app-name%|%msgid%|%msg%\\n")
action(type="omfile" file="{out}" template="fields")
"""


def test_audit_messages_reach_rsyslog_over_tls(tmp_path: Path) -> None:
    """A real rsyslog (gtls driver, TLS only) receives RFC 5424 messages framed per RFC 5425."""
    rsyslogd = shutil.which("rsyslogd") or require_tool("/usr/sbin/rsyslogd")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    (tmp_path / "work").mkdir()
    out = tmp_path / "received.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(
        RSYSLOG_CONF.format(
            work=tmp_path / "work",
            ca=pki.ca,
            cert=pki.server_cert,
            key=pki.server_key,
            port=port,
            out=out,
        )
    )
    proc = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslog.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, timeout=30)
        settings = Settings(
            data_dir=tmp_path / "data",
            fsync=False,
            audit_syslog_host="127.0.0.1",
            audit_syslog_port=port,
            audit_syslog_ca_file=pki.ca,
        )
        trail = AuditTrail.from_settings(settings, None)
        for i in range(3):
            trail.instances_stored(
                StudyRef(f"1.2.3.{i}", {"1.2.840.10008.5.1.4.1.1.2": 1}),
                source_user="MODALITY",
                source_address="127.0.0.1",
            )
        trail.close()  # sends what is queued
        assert isinstance(trail.sender, SyslogSender) and trail.sender.sent == 3

        def three_lines() -> list[str] | None:
            lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
            return lines if len(lines) >= 3 else None

        lines = wait_for(three_lines, timeout=30, what="3 messages in rsyslog's file",
                         interval=0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(lines) == 3, lines
    import xml.etree.ElementTree as ET

    for i, line in enumerate(lines):
        pri, app, msgid, msg = line.split("|", 3)
        assert (pri, app, msgid) == ("85", "radnode", "DICOM+RFC3881")
        message = ET.fromstring(msg.lstrip("\ufeff").encode())
        check_audit_schema(message)
        assert study_uids(message) == [f"1.2.3.{i}"]
    # The same messages are in the local log.
    assert len(audit_messages(tmp_path / "data" / "audit")) == 3


def test_control_characters_in_names_keep_each_message_valid_xml_on_one_line() -> None:
    """A patient name in ISO 2022 (ESC sequences) or with CR/LF, an AE title with a control
    character: the message still parses and stays one line of the log."""
    import xml.etree.ElementTree as ET

    from radnode_core.audit import (
        INSTANCES_TRANSFERRED,
        PATIENT_NUMBER,
        Participant,
        ParticipantObject,
        build_message,
    )

    name = "\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B\r\nX\x01"
    message = build_message(
        INSTANCES_TRANSFERRED,
        "C",
        "0",
        [Participant("CT\x07ROOM", True, None, "127.0.0.1")],
        "radnode",
        "site",
        [ParticipantObject("ID\x00\n1", PATIENT_NUMBER, "1", "1", name=name)],
    )
    assert b"\n" not in message and b"\r" not in message
    root = ET.fromstring(message)
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None and obj.attrib["ParticipantObjectID"] == "ID\ufffd\ufffd1"
    assert obj.findtext("ParticipantObjectName") == name.replace("\x1b", "\ufffd").replace(
        "\r", "\ufffd").replace("\n", "\ufffd").replace("\x01", "\ufffd")
    assert child(root, "ActiveParticipant").attrib["UserID"] == "CT\ufffdROOM"
