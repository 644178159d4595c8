"""Helpers of the security tests: a test PKI (a CA, server and client certificates, and a
second CA nobody trusts), written with `cryptography`; readers and a schema check of the
audit log; a STOW-RS request body."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # the trusted CA certificate
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from an untrusted CA
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """A CA with a server (127.0.0.1, localhost) and a client certificate, and a rogue
    client certificate from another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca, ca_key = _ca("radnode test CA")
    rogue_ca, rogue_ca_key = _ca("rogue CA")
    server, server_key = _leaf("radnode", ca, ca_key, server=True)
    client, client_key = _leaf("MODALITY", ca, ca_key, server=False)
    rogue, rogue_key = _leaf("MODALITY", rogue_ca, rogue_ca_key, server=False)
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "client.pem").write_bytes(client.public_bytes(pem))
    (directory / "rogue.pem").write_bytes(rogue.public_bytes(pem))
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=directory / "client.pem",
        client_key=_write_key(client_key, directory / "client.key"),
        rogue_cert=directory / "rogue.pem",
        rogue_key=_write_key(rogue_key, directory / "rogue.key"),
    )


def audit_messages(audit_dir: Path) -> list[ET.Element]:
    """Every audit message of a node's audit log, oldest first."""
    messages: list[ET.Element] = []
    for path in sorted(audit_dir.glob("audit-*.log")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                messages.append(ET.fromstring(line))
    return messages


def child(element: ET.Element, path: str) -> ET.Element:
    """The first element at ``path`` under ``element``; AssertionError if there is none."""
    found = element.find(path)
    assert found is not None, f"no {path} in {element.tag}"
    return found


def event_id(message: ET.Element) -> str:
    ev = message.find("EventIdentification/EventID")
    assert ev is not None
    return ev.attrib["csd-code"]


def outcome(message: ET.Element) -> str:
    ev = message.find("EventIdentification")
    assert ev is not None
    return ev.attrib["EventOutcomeIndicator"]


def study_uids(message: ET.Element) -> list[str]:
    return [
        po.attrib["ParticipantObjectID"]
        for po in message.findall("ParticipantObjectIdentification")
        if po.find("ParticipantObjectIDTypeCode[@csd-code='110180']") is not None
    ]


# -- PS3.15 A.5.1: the DICOM audit message schema, checked element by element ------------
# (No XSD/RelaxNG ships on this machine; these are the schema's required elements,
# attributes, cardinalities, order and value sets.)

_ACTION = {"C", "R", "U", "D", "E"}
_OUTCOME = {"0", "4", "8", "12"}
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _coded(element: ET.Element | None, what: str) -> None:
    """CodedValueType: csd-code, codeSystemName (or an OID), originalText (the meaning)."""
    assert element is not None, f"{what} missing"
    for attr in ("csd-code", "codeSystemName", "originalText"):
        assert element.attrib.get(attr), f"{what} lacks {attr}"


def check_audit_schema(message: ET.Element) -> None:
    """Raise AssertionError where ``message`` breaks PS3.15 A.5.1."""
    assert message.tag == "AuditMessage"
    tags = [child.tag for child in message]
    # EventIdentification, ActiveParticipant+, AuditSourceIdentification,
    # ParticipantObjectIdentification*  (in this order)
    assert tags[0] == "EventIdentification", tags
    n_ap = 0
    while 1 + n_ap < len(tags) and tags[1 + n_ap] == "ActiveParticipant":
        n_ap += 1
    assert n_ap >= 1, "at least one ActiveParticipant"
    assert tags[1 + n_ap] == "AuditSourceIdentification", tags
    assert all(t == "ParticipantObjectIdentification" for t in tags[2 + n_ap :]), tags

    ev = message[0]
    assert ev.attrib.get("EventActionCode") in _ACTION
    assert _DATETIME.match(ev.attrib.get("EventDateTime", "")), ev.attrib
    assert ev.attrib.get("EventOutcomeIndicator") in _OUTCOME
    assert ev[0].tag == "EventID"
    _coded(ev[0], "EventID")
    for child in ev[1:]:
        assert child.tag in ("EventTypeCode", "EventOutcomeDescription", "PurposeOfUse"), child.tag
        if child.tag == "EventTypeCode":
            _coded(child, "EventTypeCode")

    for ap in message.findall("ActiveParticipant"):
        assert ap.attrib.get("UserID"), "ActiveParticipant UserID"
        assert ap.attrib.get("UserIsRequestor") in ("true", "false")
        if "NetworkAccessPointID" in ap.attrib:
            assert ap.attrib.get("NetworkAccessPointTypeCode") in {"1", "2", "3", "4", "5"}
        for role in ap.findall("RoleIDCode"):
            _coded(role, "RoleIDCode")
        assert all(c.tag in ("RoleIDCode", "MediaIdentifier") for c in ap)
    assert (
        sum(ap.attrib["UserIsRequestor"] == "true" for ap in message.findall("ActiveParticipant"))
        >= 1
    )

    src = message.find("AuditSourceIdentification")
    assert src is not None and src.attrib.get("AuditSourceID")
    for code in src.findall("AuditSourceTypeCode"):
        _coded(code, "AuditSourceTypeCode")

    order = [
        "ParticipantObjectIDTypeCode",
        "ParticipantObjectName|ParticipantObjectQuery",
        "ParticipantObjectDetail",
        "ParticipantObjectDescription",
        "SOPClass",
    ]
    for po in message.findall("ParticipantObjectIdentification"):
        assert po.attrib.get("ParticipantObjectID")
        assert po.attrib.get("ParticipantObjectTypeCode", "1") in {"1", "2", "3", "4"}
        assert 1 <= int(po.attrib.get("ParticipantObjectTypeCodeRole", "1")) <= 24
        children = [c.tag for c in po]
        assert children and children[0] == "ParticipantObjectIDTypeCode", children
        _coded(po[0], "ParticipantObjectIDTypeCode")
        ranks = [next(i for i, o in enumerate(order) if c in o.split("|")) for c in children]
        assert ranks == sorted(ranks), f"ParticipantObjectIdentification order: {children}"
        assert sum(c in ("ParticipantObjectName", "ParticipantObjectQuery") for c in children) <= 1
        for sop in po.findall("SOPClass"):
            assert sop.attrib.get("UID") and sop.attrib.get("NumberOfInstances", "0").isdigit()


BOUNDARY = "radnode-security-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def stow_body(*parts: bytes) -> bytes:
    """A STOW-RS request body of Part 10 files (PS3.18 10.5)."""
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()
