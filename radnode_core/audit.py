"""The audit trail: DICOM Audit Messages (PS3.15 A.5) for who stored, queried, retrieved,
exported, judged, had re-analysed or failed to log in, and who imported, activated or
deactivated which model, written to an append-only log and optionally sent to an audit
record repository over syslog (RFC 5424 over TLS, RFC 5425).

Each message follows the DICOM audit message schema (PS3.15 A.5.1): one
``EventIdentification`` (EventID coded from DCM, e.g. 110104 "DICOM Instances
Transferred"; EventActionCode; EventOutcomeIndicator 0/4/8/12), the
``ActiveParticipant`` s (the requesting user or AE with its network access point,
and radnode), one ``AuditSourceIdentification`` and the
``ParticipantObjectIdentification`` s: the study (Study Instance UID) and its
patient (Patient ID, with the name as ParticipantObjectName). Patient identity
goes into the audit log only, never into an ordinary log line.

The log is ``<audit_dir>/audit-YYYYMMDD.log``, one file per UTC day, one message per
line (an XML document without line breaks), opened ``O_APPEND``; when the node fsyncs
its store, the log is fsynced within a second of each message (off the request path).
Stores are audited per association and study (C-STORE) or per request and study
(STOW-RS), never per instance. Failed logins and node authentications are audited per
source address and reason once per ``auth_failure_interval_s``: the first as it happens,
the others of the interval as one message that gives their count
(:class:`radnode_core.throttle.Throttle`), each with one ordinary log line.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from sqlalchemy import select

from radnode_core.index import Index, studies
from radnode_core.settings import Settings
from radnode_core.syslog import SyslogSender
from radnode_core.throttle import Throttle

logger = logging.getLogger(__name__)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    """A coded value of the schema: csd-code, codeSystemName, originalText (the meaning)."""
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": code.value,
            "codeSystemName": code.scheme_designator,
            "originalText": code.meaning,
        },
    )


# EventID (PS3.15 A.5.3, CID 400 "Audit Event ID")
INSTANCES_ACCESSED = codes.DCM.DICOMInstancesAccessed
INSTANCES_TRANSFERRED = codes.DCM.DICOMInstancesTransferred
EXPORT = codes.DCM.Export
QUERY = codes.DCM.Query
STUDY_DELETED = codes.DCM.DICOMStudyDeleted
SECURITY_ALERT = codes.DCM.SecurityAlert
USER_AUTHENTICATION = codes.DCM.UserAuthentication
# EventTypeCode (CID 401 "Audit Event Type Code")
LOGIN = codes.DCM.Login
NODE_AUTHENTICATION = codes.DCM.NodeAuthentication
SOFTWARE_CONFIGURATION = codes.DCM.SoftwareConfiguration
# RoleIDCode (CID 402 "Audit Active Participant Role ID Code")
APPLICATION = codes.DCM.Application
DESTINATION = codes.DCM.DestinationRoleID
SOURCE = codes.DCM.SourceRoleID
DESTINATION_MEDIA = codes.DCM.DestinationMedia
# ParticipantObjectIDTypeCode (RFC 3881 and CID 404)
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")  # pydicom's dictionary lacks it
URI = Code("12", "RFC-3881", "URI")  # pydicom's dictionary lacks it
STUDY_INSTANCE_UID = codes.DCM.StudyInstanceUID
SOP_CLASS_UID = codes.DCM.SOPClassUID
# AuditSourceTypeCode (RFC 3881 5.4.3): 4 = application server process
APPLICATION_SERVER = Code("4", "DCM", "Application Server Process")  # pydicom's dictionary lacks it

Action = Literal["C", "R", "U", "D", "E"]
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a user, an AE title or a process, and where it acted from."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    address: str | None = None  # NetworkAccessPointID: an IP address (type 2)
    alternative_id: str | None = None
    user_name: str | None = None


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObjectIdentification (PS3.15 A.5.2.5)."""

    object_id: str
    id_type: Code
    type_code: str  # 1 person, 2 system object
    type_role: str  # 1 patient, 3 report, 13 security resource, 24 query
    name: str | None = None
    query: bytes | None = None
    description: str | None = None
    sop_classes: Mapping[str, int] = field(default_factory=dict)  # SOP Class UID -> count
    details: Mapping[str, str] = field(default_factory=dict)  # ParticipantObjectDetail


@dataclass(frozen=True)
class StudyRef:
    """A study an event touched, with its SOP classes and instance counts."""

    study_uid: str
    sop_classes: Mapping[str, int] = field(default_factory=dict)


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_message(
    event_id: Code,
    action: Action,
    outcome: str,
    participants: Iterable[Participant],
    source_id: str,
    site_id: str,
    objects: Iterable[ParticipantObject] = (),
    *,
    event_type: Code | None = None,
    outcome_description: str | None = None,
    when: str | None = None,
) -> bytes:
    """One AuditMessage (PS3.15 A.5.1) as UTF-8 XML, elements in schema order."""
    root = ET.Element("AuditMessage")
    ev = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": when or _iso_now(),
            "EventOutcomeIndicator": outcome,
        },
    )
    _coded(ev, "EventID", event_id)
    if event_type is not None:
        _coded(ev, "EventTypeCode", event_type)
    if outcome_description:
        ET.SubElement(ev, "EventOutcomeDescription").text = outcome_description[:1024]
    for p in participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.is_requestor else "false"}
        if p.alternative_id:
            attrs["AlternativeUserID"] = p.alternative_id
        if p.user_name:
            attrs["UserName"] = p.user_name
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2"
        ap = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _coded(ap, "RoleIDCode", p.role)
    src = ET.SubElement(
        root,
        "AuditSourceIdentification",
        {"AuditEnterpriseSiteID": site_id, "AuditSourceID": source_id},
    )
    _coded(src, "AuditSourceTypeCode", APPLICATION_SERVER)
    for o in objects:
        po = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": o.object_id,
                "ParticipantObjectTypeCode": o.type_code,
                "ParticipantObjectTypeCodeRole": o.type_role,
            },
        )
        _coded(po, "ParticipantObjectIDTypeCode", o.id_type)
        if o.name is not None:
            ET.SubElement(po, "ParticipantObjectName").text = o.name
        elif o.query is not None:
            ET.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode()
        for kind, value in o.details.items():
            ET.SubElement(
                po,
                "ParticipantObjectDetail",
                {"type": kind, "value": base64.b64encode(value.encode()).decode()},
            )
        if o.description is not None:
            ET.SubElement(po, "ParticipantObjectDescription").text = o.description
        for uid, count in sorted(o.sop_classes.items()):
            ET.SubElement(po, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    for element in root.iter():  # values come from datasets and peers: keep the XML valid
        if element.text:
            element.text = _xml_safe(element.text)
        for key, value in element.attrib.items():
            element.attrib[key] = _xml_safe(value)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


_NOT_XML_CHAR = re.compile("[^\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(value: str) -> str:
    """A value as XML 1.0 character data on one line: control characters (an ESC of an
    ISO 2022 patient name, CR, LF) become U+FFFD, which ElementTree would otherwise
    write as is, leaving a message no XML parser reads or splitting the log line."""
    return _NOT_XML_CHAR.sub("\ufffd", value)


class AuditLog:
    """Append-only local log: one file per UTC day, one message per line, O_APPEND.

    Each message is one ``write`` (in the page cache at once: it survives the process);
    with ``fsync`` a background thread fsyncs the file within ``fsync_interval_s`` of a
    write (it survives the machine), so no audited request waits for the disk.
    """

    def __init__(self, directory: Path, fsync: bool = True, fsync_interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock = threading.Lock()
        self._day = ""
        self._fd: int | None = None
        self._dirty = False
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def path_for(self, day: str) -> Path:
        return self.directory / f"audit-{day}.log"

    def append(self, message: bytes) -> None:
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        line = message.replace(b"\n", b"&#10;") + b"\n"
        with self._lock:
            if day != self._day or self._fd is None:
                self._close()
                self._fd = os.open(
                    self.path_for(day), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
                )
                self._day = day
            os.write(self._fd, line)  # one write: a line is never interleaved with another
            self._dirty = True
            if self.fsync and self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="radnode-audit-fsync", daemon=True
                )
                self._flusher.start()

    def flush(self) -> None:
        """fsync what was written (the flusher calls this; so does close)."""
        with self._lock:
            if self._fd is not None and self._dirty and self.fsync:
                os.fsync(self._fd)
            self._dirty = False

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.fsync_interval_s):
            try:
                self.flush()
            except OSError as exc:
                logger.error("audit log fsync failed", extra={"errno": exc.errno})

    def _close(self) -> None:
        if self._fd is not None:
            if self._dirty and self.fsync:
                os.fsync(self._fd)
            self._dirty = False
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        with self._lock:
            self._close()


class AuditTrail:
    """The node's audit events; each method builds one message per study (or one per event)
    and hands it to the log and, when configured, to the syslog sender. Never raises: a
    failing audit write is logged (without PHI) and counted, the audited action goes on."""

    def __init__(
        self,
        log: AuditLog | None,
        index: Index | None,
        *,
        ae_title: str,
        site_id: str,
        sender: _Sender | None = None,
        failure_interval_s: float = 60.0,
    ) -> None:
        self.log = log
        self.index = index
        self.ae_title = ae_title
        self.site_id = site_id
        self.sender = sender
        self.source_id = f"{ae_title}@{socket.gethostname()}"
        self.process = Participant(
            user_id=ae_title,
            is_requestor=False,
            alternative_id=str(os.getpid()),
            address=None,
        )
        self.failures = 0
        self._failed_logins: Throttle[tuple[str, str | None, str]] = Throttle(
            failure_interval_s, self._repeated_failures, name="radnode-audit-failures"
        )

    @classmethod
    def from_settings(cls, settings: Settings, index: Index | None) -> AuditTrail:
        log = None
        if settings.audit_enabled:
            log = AuditLog(settings.audit_dir or settings.data_dir / "audit", settings.fsync)
        sender = None
        if settings.audit_enabled and settings.audit_syslog_host:
            sender = SyslogSender.from_settings(settings)
            sender.start()
        return cls(
            log,
            index,
            ae_title=settings.ae_title,
            site_id=settings.audit_site_id,
            sender=sender,
            failure_interval_s=settings.auth_failure_interval_s,
        )

    @property
    def enabled(self) -> bool:
        return self.log is not None

    def close(self) -> None:
        self._failed_logins.close()
        if self.sender is not None:
            self.sender.stop()
        if self.log is not None:
            self.log.close()

    # -- plumbing --------------------------------------------------------------------

    def emit(self, message: bytes) -> None:
        if self.log is None:
            return
        try:
            self.log.append(message)
        except OSError as exc:
            self.failures += 1
            logger.error("audit log write failed", extra={"errno": exc.errno})
        if self.sender is not None:
            self.sender.send(message)

    def _patients(self, study_uids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Patient ID and name per study, from the index (one query)."""
        uids = sorted(set(study_uids))
        if self.index is None or not uids:
            return {}
        stmt = select(studies.c.study_uid, studies.c.patient_id, studies.c.patient_name).where(
            studies.c.study_uid.in_(uids)
        )
        try:
            with self.index.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except Exception:  # noqa: BLE001 - the audit still names the study
            logger.warning("audit: patient lookup failed")
            return {}
        return {r.study_uid: (r.patient_id or "", r.patient_name or "") for r in rows}

    def _study_objects(self, refs: Iterable[StudyRef]) -> list[ParticipantObject]:
        refs = list(refs)
        patients = self._patients(r.study_uid for r in refs)
        objects: list[ParticipantObject] = []
        seen_patients: set[str] = set()
        for ref in refs:
            objects.append(
                ParticipantObject(
                    ref.study_uid, STUDY_INSTANCE_UID, "2", "3", sop_classes=ref.sop_classes
                )
            )
            pid, name = patients.get(ref.study_uid, ("", ""))
            if pid and pid not in seen_patients:
                seen_patients.add(pid)
                objects.append(ParticipantObject(pid, PATIENT_NUMBER, "1", "1", name=name))
        return objects

    def _event(
        self,
        event_id: Code,
        action: Action,
        outcome: str,
        participants: list[Participant],
        objects: list[ParticipantObject],
        *,
        event_type: Code | None = None,
        outcome_description: str | None = None,
    ) -> None:
        try:
            message = build_message(
                event_id,
                action,
                outcome,
                participants,
                self.source_id,
                self.site_id,
                objects,
                event_type=event_type,
                outcome_description=outcome_description,
            )
        except Exception:  # noqa: BLE001 - never break the audited action
            self.failures += 1
            logger.exception("audit message could not be built")
            return
        self.emit(message)

    def _me(self, role: Code) -> Participant:
        return Participant(
            user_id=self.process.user_id,
            is_requestor=False,
            alternative_id=self.process.alternative_id,
            role=role,
        )

    # -- events ----------------------------------------------------------------------

    def instances_stored(
        self,
        study: StudyRef,
        *,
        source_user: str,
        source_address: str | None,
        refused: int = 0,
        via: str = "C-STORE",
    ) -> None:
        """110104 DICOM Instances Transferred, action C: radnode received a study's
        instances (one message per association or STOW-RS request and study)."""
        if not self.enabled:
            return
        outcome = MINOR_FAILURE if refused else SUCCESS
        self._event(
            INSTANCES_TRANSFERRED,
            "C",
            outcome,
            [
                Participant(source_user, True, SOURCE, source_address),
                self._me(DESTINATION),
            ],
            self._study_objects([study]),
            outcome_description=f"{via}: {refused} instance(s) refused" if refused else None,
        )

    def instances_failed(
        self,
        *,
        source_user: str,
        source_address: str | None,
        outcome: str = SERIOUS_FAILURE,
        via: str = "C-STORE",
        refused: int = 0,
    ) -> None:
        """110104 DICOM Instances Transferred, action C, failed: nothing of a transfer was
        stored (so no study to name)."""
        if not self.enabled:
            return
        self._event(
            INSTANCES_TRANSFERRED,
            "C",
            outcome,
            [Participant(source_user, True, SOURCE, source_address), self._me(DESTINATION)],
            [],
            outcome_description=f"{via}: nothing stored ({refused} instance(s) refused)"
            if refused
            else f"{via}: nothing stored",
        )

    def instances_retrieved(
        self,
        studies_: Iterable[StudyRef],
        *,
        user: str,
        address: str | None,
        outcome: str = SUCCESS,
        destination: str | None = None,
        destination_address: str | None = None,
        outcome_description: str | None = None,
    ) -> None:
        """110104 DICOM Instances Transferred, action R: radnode sent instances a user or AE
        asked for (WADO-RS, C-GET: the requestor is the destination; C-MOVE: the
        ``destination`` AE is another participant than the requestor)."""
        if not self.enabled:
            return
        if destination is None:
            participants = [self._me(SOURCE), Participant(user, True, DESTINATION, address)]
        else:
            participants = [
                self._me(SOURCE),
                Participant(destination, False, DESTINATION, destination_address),
                Participant(user, True, None, address),
            ]
        self._event(
            INSTANCES_TRANSFERRED,
            "R",
            outcome,
            participants,
            self._study_objects(studies_),
            outcome_description=outcome_description,
        )

    def instances_sent(
        self,
        study: StudyRef,
        *,
        destination: str,
        destination_address: str | None,
        outcome: str = SUCCESS,
        outcome_description: str | None = None,
    ) -> None:
        """110104 DICOM Instances Transferred, action R: radnode pushed a study's instances
        to a peer on its own initiative (the PACS outbox: results, forwarded originals)."""
        if not self.enabled:
            return
        self._event(
            INSTANCES_TRANSFERRED,
            "R",
            outcome,
            [
                Participant(self.process.user_id, True, SOURCE, None, self.process.alternative_id),
                Participant(destination, False, DESTINATION, destination_address),
            ],
            self._study_objects([study]),
            outcome_description=outcome_description,
        )

    def query(
        self, *, user: str, address: str | None, path: str, query: str, outcome: str = SUCCESS
    ) -> None:
        """110112 Query, action E (QIDO-RS): the query itself is the participant object."""
        if not self.enabled:
            return
        self._event(
            QUERY,
            "E",
            outcome,
            [Participant(user, True, None, address), self._me(APPLICATION)],
            [ParticipantObject(path, URI, "2", "24", query=query.encode())],
        )

    def dimse_query(
        self,
        *,
        user: str,
        address: str | None,
        sop_class_uid: str,
        identifier: bytes,
        transfer_syntax_uid: str,
        outcome: str = SUCCESS,
        outcome_description: str | None = None,
    ) -> None:
        """110112 Query, action E (C-FIND, PS3.15 A.5.3.12): the information model's SOP
        Class UID, with the Identifier as sent as the query and its transfer syntax."""
        if not self.enabled:
            return
        self._event(
            QUERY,
            "E",
            outcome,
            [Participant(user, True, None, address), self._me(APPLICATION)],
            [
                ParticipantObject(
                    sop_class_uid,
                    SOP_CLASS_UID,
                    "2",
                    "3",
                    query=identifier,
                    details={"TransferSyntax": transfer_syntax_uid},
                )
            ],
            outcome_description=outcome_description,
        )

    def export(
        self,
        studies_: Iterable[StudyRef | str],
        *,
        destination: str,
        user: str = "radnode-training",
        outcome: str = SUCCESS,
    ) -> None:
        """110106 Export, action R: studies leave the node's control, e.g. copied into a
        training data set (``destination`` names it: a path or a dataset id)."""
        if not self.enabled:
            return
        refs = [s if isinstance(s, StudyRef) else StudyRef(s) for s in studies_]
        self._event(
            EXPORT,
            "R",
            outcome,
            [
                Participant(user, True, None),
                self._me(SOURCE),
                Participant(destination, False, DESTINATION_MEDIA),
            ],
            self._study_objects(refs),
        )

    def feedback(
        self, study_uid: str, *, user: str, decision: str, sr_sop_class_uid: str | None = None
    ) -> None:
        """110103 DICOM Instances Accessed, action C: a radiologist's judgement made a new SR."""
        if not self.enabled:
            return
        classes = {sr_sop_class_uid: 1} if sr_sop_class_uid else {}
        self._event(
            INSTANCES_ACCESSED,
            "C",
            SUCCESS,
            [Participant(user, True, None), self._me(APPLICATION)],
            self._study_objects([StudyRef(study_uid, classes)]),
            outcome_description=f"feedback: {decision}",
        )

    def model_changed(
        self,
        *,
        action: str,
        model: str,
        version: str | None,
        user: str,
        detail: str | None = None,
        outcome: str = SUCCESS,
    ) -> None:
        """110113 Security Alert, event type 110131 Software Configuration: a model package
        was imported (or its import refused, outcome 4), activated or deactivated. What the
        node runs on patients' studies changed, which is a software configuration change of
        the node (PS3.15 A.5.3.11), not an application start or stop. The model is the
        participant object (``radnode-model:<name>:<version>``, a URI, role 13 Security
        Resource); ``action`` (import / activate / deactivate) and ``detail`` (sha256,
        trusted code, or why refused) are the outcome description."""
        if not self.enabled:
            return
        object_id = f"radnode-model:{model}" + (f":{version}" if version else "")
        text = f"model {action}: {model}" + (f":{version}" if version else "")
        self._event(
            SECURITY_ALERT,
            "E",
            outcome,
            [Participant(user, True, None), self._me(APPLICATION)],
            [ParticipantObject(object_id, URI, "2", "13", description=detail)],
            event_type=SOFTWARE_CONFIGURATION,
            outcome_description=f"{text}; {detail}" if detail else text,
        )

    def analysis_requeued(
        self, study_uids: Iterable[str], *, user: str, address: str | None, selection: str
    ) -> None:
        """110103 DICOM Instances Accessed, action C: a user had studies analysed again (each
        gets a new analysis and SR); one message naming every study and the selection."""
        if not self.enabled:
            return
        self._event(
            INSTANCES_ACCESSED,
            "C",
            SUCCESS,
            [Participant(user, True, None, address), self._me(APPLICATION)],
            self._study_objects(StudyRef(uid) for uid in study_uids),
            outcome_description=f"requeued for AI analysis: {selection}"[:1024],
        )

    def instances_deleted(
        self,
        study: StudyRef,
        *,
        user: str,
        address: str | None,
        whole_study: bool,
        patient: tuple[str, str] | None = None,
        reason: str | None = None,
        outcome: str = SUCCESS,
    ) -> None:
        """Action D: instances removed from the store. A whole study (every instance, its
        index rows) is 110105 DICOM Study Deleted (PS3.15 A.5.3.8); part of one (a series,
        or the originals a retention policy removes while the SRs stay) is 110103 DICOM
        Instances Accessed with action D (PS3.15 A.5.3.6). ``patient`` (ID, name) is read
        before the index forgets it; ``user`` is the admin, or radnode's own process for
        the retention policy."""
        if not self.enabled:
            return
        objects = [
            ParticipantObject(
                study.study_uid, STUDY_INSTANCE_UID, "2", "3", sop_classes=study.sop_classes
            )
        ]
        if patient is None:
            objects = self._study_objects([study])
        elif patient[0]:
            objects.append(ParticipantObject(patient[0], PATIENT_NUMBER, "1", "1", name=patient[1]))
        requestor = (
            Participant(user, True, None, address)
            if user != self.process.user_id
            else Participant(user, True, None, None, self.process.alternative_id)
        )
        participants = [requestor]
        if user != self.process.user_id:
            participants.append(self._me(APPLICATION))
        self._event(
            STUDY_DELETED if whole_study else INSTANCES_ACCESSED,
            "D",
            outcome,
            participants,
            objects,
            outcome_description=reason,
        )

    def login_failed(self, *, user: str, address: str | None, reason: str) -> None:
        """110114 User Authentication (Login), outcome 4: a bad or missing bearer token,
        a refused association or TLS handshake. Throttled per address and reason."""
        if self._failed_logins.hit(("login", address, reason), user):
            logger.warning("login failed", extra={"peer": address, "reason": reason})
            self._login_failed(user, address, reason)

    def node_authentication_failed(self, *, address: str | None, reason: str) -> None:
        """110113 Security Alert, event type 110126 Node Authentication, outcome 4: a DICOM
        TLS handshake refused (no or untrusted certificate, TLS < 1.2); the IHE ATNA
        Node-Authentication-Failure event, not a user login. Throttled as logins are."""
        if self._failed_logins.hit(("node", address, reason)):
            logger.warning("node authentication failed", extra={"peer": address, "reason": reason})
            self._node_authentication_failed(address, reason)

    def _repeated_failures(
        self, key: tuple[str, str | None, str], count: int, last: object
    ) -> None:
        """The failures of one interval after its first: one message with their count."""
        kind, address, reason = key
        interval = f"{self._failed_logins.interval_s:g}"
        summary = f"{reason} (repeated {count} more times in {interval} s)"
        logger.warning(
            "login failures repeated"
            if kind == "login"
            else "node authentication failures repeated",
            extra={"peer": address, "reason": reason, "count": count, "interval_s": interval},
        )
        if kind == "login":
            self._login_failed(str(last or "unknown"), address, summary)
        else:
            self._node_authentication_failed(address, summary)

    def _login_failed(self, user: str, address: str | None, reason: str) -> None:
        if not self.enabled:
            return
        self._event(
            USER_AUTHENTICATION,
            "E",
            MINOR_FAILURE,
            [Participant(user, True, None, address), self._me(APPLICATION)],
            [],
            event_type=LOGIN,
            outcome_description=reason,
        )

    def _node_authentication_failed(self, address: str | None, reason: str) -> None:
        if not self.enabled:
            return
        self._event(
            SECURITY_ALERT,
            "E",
            MINOR_FAILURE,
            [Participant(address or "unknown", True, None, address), self._me(APPLICATION)],
            [],
            event_type=NODE_AUTHENTICATION,
            outcome_description=reason,
        )


class _Sender(Protocol):
    """What :class:`AuditTrail` needs of a remote sender (a :class:`SyslogSender`)."""

    def send(self, message: bytes) -> None: ...

    def stop(self) -> None: ...
