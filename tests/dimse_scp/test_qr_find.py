"""C-FIND against `radnode scp`: dcmtk findscu in both information models at every level,
each answer compared with QIDO-RS's on the same index (`radnode api` on the same data dir);
refused identifiers, unsupported models, the allow-list, cancellation and the audit."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.qr_studies import Spec, Studies, instance, part10, write_studies
from tests.support.radnode_process import RadnodeProcess
from tests.support.scu_raw import settle
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for


@dataclass
class QrNode:
    scp: RadnodeProcess
    api: RadnodeProcess
    studies: Studies
    work: Path

    @property
    def qido(self) -> str:
        return f"http://127.0.0.1:{self.api.http_port}/dicom-web"


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QrNode]:
    root = tmp_path_factory.mktemp("qr-find")
    studies = write_studies(root / "in")
    scp = RadnodeProcess(root / "data", "scp").start()
    api = RadnodeProcess(root / "data", "api")
    try:
        sent = storescu(scp.dicom_port, studies.files)
        assert sent.returncode == 0, sent.stderr
        api.start()
        yield QrNode(scp, api, studies, root)
    finally:
        api.stop()
        scp.stop()


def findscu(
    node: QrNode, model: str, keys: list[str], *extra: str, aet: str = "WORKSTATION"
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """findscu with ``-X``: every pending response's Identifier, as written by dcmtk."""
    out = node.work / f"find-{len(list(node.work.glob('find-*')))}"
    out.mkdir()
    args = [
        require_tool("findscu"),
        "-aet",
        aet,
        "-aec",
        "RADNODE",
        model,
        "-X",
        "-od",
        str(out),
        *extra,
    ]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(node.scp.dicom_port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    return result, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def qido(node: QrNode, path: str, params: dict[str, str]) -> list[dict]:
    response = httpx.get(f"{node.qido}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _value(item: dict, tag: str) -> object:
    values = item.get(tag, {}).get("Value", [])
    if not values:
        return None
    if isinstance(values[0], dict):  # PN
        return values[0].get("Alphabetic")
    return values if len(values) > 1 else values[0]


def _dimse(ds: Dataset, keyword: str) -> object:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if keyword.startswith("NumberOf") or keyword in ("SeriesNumber", "InstanceNumber"):
        return int(value)
    if (
        isinstance(value, list)
        or getattr(value, "VM", 1) > 1
        or type(value).__name__ == "MultiValue"
    ):
        return [str(v) for v in value]
    return str(value)


STUDY_KEYS = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "StudyDescription": "00081030",
    "ModalitiesInStudy": "00080061",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
    "StudyInstanceUID": "0020000D",
}
SERIES_KEYS = {
    "Modality": "00080060",
    "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E",
    "NumberOfSeriesRelatedInstances": "00201209",
    "SeriesInstanceUID": "0020000E",
}
IMAGE_KEYS = {"SOPInstanceUID": "00080018", "SOPClassUID": "00080016", "InstanceNumber": "00200013"}


def _compare(answers: list[Dataset], items: list[dict], key: str, keys: dict[str, str]) -> None:
    """The same matches (by ``key``), and the same value of every key in each."""
    ours = {str(ds[key].value): ds for ds in answers}
    theirs = {_value(item, keys[key]): item for item in items}
    assert set(ours) == set(theirs)
    assert len(ours) == len(answers), "a match was answered twice"
    for uid, ds in ours.items():
        for keyword, tag in keys.items():
            assert _dimse(ds, keyword) == _value(theirs[uid], tag), (uid, keyword)


def _matching(filters: dict[str, str]) -> list[str]:
    """``-k`` arguments; a value outside ASCII goes with its character set (UTF-8)."""
    keys = [f"{k}={v}" for k, v in filters.items()]
    if not all(v.isascii() for v in filters.values()):
        keys.append("SpecificCharacterSet=ISO_IR 192")
    return keys


STUDY_QUERIES = [
    {"PatientID": "P001"},
    {"PatientID": "P00*"},
    {"PatientName": "doe*"},
    {"PatientName": "DOE^JOHN"},
    {"PatientName": "*john*"},
    {"PatientName": "Müller*"},
    {"StudyDate": "20240101-20240131"},
    {"StudyDate": "-20231231"},
    {"StudyDate": "20240201-"},
    {"StudyTime": "080000-120000"},
    {"AccessionNumber": "ACC00?"},
    {"StudyDescription": "CT*"},
    {"ModalitiesInStudy": "MR"},
    {"ModalitiesInStudy": "SEG"},
    {"PatientID": "P001", "StudyDate": "20240201-20241231"},
    {"PatientName": "doe*", "ModalitiesInStudy": "MR"},
]


@pytest.mark.parametrize(
    "filters", STUDY_QUERIES, ids=lambda f: "&".join(f"{k}={v}" for k, v in f.items())
)
def test_study_root_study_level_matches_qido(qr: QrNode, filters: dict[str, str]) -> None:
    keys = [
        "QueryRetrieveLevel=STUDY",
        *_matching(filters),
        *(k for k in STUDY_KEYS if k not in filters),
    ]
    result, answers = findscu(qr, "-S", keys)
    assert result.returncode == 0, result.stderr
    items = qido(qr, "/studies", filters)
    _compare(answers, items, "StudyInstanceUID", STUDY_KEYS)
    for ds in answers:
        assert ds.QueryRetrieveLevel == "STUDY" and ds.RetrieveAETitle == "RADNODE"
        # Only what was asked for, the level, where to retrieve from and the character set.
        assert {e.keyword for e in ds} <= {
            *STUDY_KEYS,
            "QueryRetrieveLevel",
            "RetrieveAETitle",
            "SpecificCharacterSet",
        }


def test_study_list_matching_and_non_ascii_names(qr: QrNode) -> None:
    uids = qr.studies.study_uids
    result, answers = findscu(
        qr,
        "-S",
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids[0]}\\{uids[3]}", "PatientName"],
    )
    assert result.returncode == 0, result.stderr
    by_uid = {ds.StudyInstanceUID: ds for ds in answers}
    assert set(by_uid) == {uids[0], uids[3]}
    assert str(by_uid[uids[3]].PatientName) == "Müller^Jürgen"
    assert by_uid[uids[3]].SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in by_uid[uids[0]]  # ASCII only: the default repertoire


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"Modality": "CT"},
        {"SeriesNumber": "2"},
        {"SeriesDescription": "AI*"},
        {"Modality": "CT\\SEG"},
    ],
    ids=str,
)
def test_study_root_series_level_matches_qido(qr: QrNode, filters: dict[str, str]) -> None:
    for uid in qr.studies.study_uids:
        keys = [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={uid}",
            *_matching(filters),
            *(k for k in SERIES_KEYS if k not in filters),
        ]
        result, answers = findscu(qr, "-S", keys)
        assert result.returncode == 0, result.stderr
        items = qido(
            qr, f"/studies/{uid}/series", {k: v.replace("\\", ",") for k, v in filters.items()}
        )
        _compare(answers, items, "SeriesInstanceUID", SERIES_KEYS)
        assert all(ds.StudyInstanceUID == uid for ds in answers)


def test_study_root_image_level_matches_qido(qr: QrNode) -> None:
    for index, uid in enumerate(qr.studies.study_uids):
        for series_uid in qr.studies.series_of(index):
            for filters in ({}, {"InstanceNumber": "1"}, {"InstanceNumber": "2\\3"}):
                keys = [
                    "QueryRetrieveLevel=IMAGE",
                    f"StudyInstanceUID={uid}",
                    f"SeriesInstanceUID={series_uid}",
                    *_matching(filters),
                    *(k for k in IMAGE_KEYS if k not in filters),
                ]
                result, answers = findscu(qr, "-S", keys)
                assert result.returncode == 0, result.stderr
                items = qido(qr, f"/studies/{uid}/series/{series_uid}/instances", filters)
                _compare(answers, items, "SOPInstanceUID", IMAGE_KEYS)


@pytest.mark.parametrize(
    "filters",
    [{}, {"PatientName": "doe*"}, {"PatientID": "P00?"}, {"PatientName": "müller^jürgen"}],
    ids=str,
)
def test_patient_root_patient_level_groups_qido_studies(
    qr: QrNode, filters: dict[str, str]
) -> None:
    keys = [
        "QueryRetrieveLevel=PATIENT",
        *_matching(filters),
        *(
            k
            for k in ("PatientID", "PatientName", "NumberOfPatientRelatedStudies")
            if k not in filters
        ),
    ]
    result, answers = findscu(qr, "-P", keys)
    assert result.returncode == 0, result.stderr
    studies = qido(qr, "/studies", filters)
    patients: dict[str, list[dict]] = {}
    for item in studies:
        patients.setdefault(str(_value(item, "00100020")), []).append(item)
    assert {str(ds.PatientID) for ds in answers} == set(patients)
    for ds in answers:
        mine = patients[str(ds.PatientID)]
        assert int(ds.NumberOfPatientRelatedStudies) == len(
            qido(qr, "/studies", {"PatientID": str(ds.PatientID)})
        )
        assert str(ds.PatientName) in {_value(i, "00100010") for i in mine}


def test_patient_root_lower_levels_match_qido(qr: QrNode) -> None:
    uids = qr.studies.study_uids
    result, answers = findscu(
        qr,
        "-P",
        [
            "QueryRetrieveLevel=STUDY",
            "PatientID=P001",
            "StudyDate=20240201-",
            *(k for k in STUDY_KEYS if k not in ("PatientID", "StudyDate")),
        ],
    )
    assert result.returncode == 0, result.stderr
    _compare(
        answers,
        qido(qr, "/studies", {"PatientID": "P001", "StudyDate": "20240201-"}),
        "StudyInstanceUID",
        STUDY_KEYS,
    )
    assert [ds.StudyInstanceUID for ds in answers] == [uids[5]]
    result, answers = findscu(
        qr,
        "-P",
        [
            "QueryRetrieveLevel=SERIES",
            "PatientID=P001",
            f"StudyInstanceUID={uids[0]}",
            *SERIES_KEYS,
        ],
    )
    _compare(answers, qido(qr, f"/studies/{uids[0]}/series", {}), "SeriesInstanceUID", SERIES_KEYS)
    series_uid = qr.studies.series_of(0)[0]
    result, answers = findscu(
        qr,
        "-P",
        [
            "QueryRetrieveLevel=IMAGE",
            "PatientID=P001",
            f"StudyInstanceUID={uids[0]}",
            f"SeriesInstanceUID={series_uid}",
            *IMAGE_KEYS,
        ],
    )
    _compare(
        answers,
        qido(qr, f"/studies/{uids[0]}/series/{series_uid}/instances", {}),
        "SOPInstanceUID",
        IMAGE_KEYS,
    )


def test_keys_outside_the_index_come_from_the_instances(qr: QrNode) -> None:
    uid = qr.studies.study_uids[1]
    result, answers = findscu(
        qr,
        "-S",
        [
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={uid}",
            "InstitutionName",
            "PatientWeight",
            "SeriesDescription",
        ],
    )
    [ds] = answers
    assert ds.InstitutionName == "Radnode General"
    assert ds.PatientWeight in (None, "")  # not in the instances: returned empty
    assert ds.SeriesDescription in (None, "")  # below the level: returned empty
    # QIDO-RS returns the same attribute the same way (includefield).
    [item] = qido(qr, "/studies", {"StudyInstanceUID": uid, "includefield": "InstitutionName"})
    assert _value(item, "00080080") == ds.InstitutionName


def test_request_attributes_sequence_is_matched_like_qido(qr: QrNode) -> None:
    uid = qr.studies.study_uids[0]
    result, answers = findscu(
        qr,
        "-S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={uid}",
            "RequestAttributesSequence[0].ScheduledProcedureStepID=SPS-ACC001",
            "SeriesInstanceUID",
        ],
    )
    assert result.returncode == 0, result.stderr
    items = qido(
        qr,
        f"/studies/{uid}/series",
        {"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-ACC001"},
    )
    assert {ds.SeriesInstanceUID for ds in answers} == {_value(i, "0020000E") for i in items}
    assert len(answers) == 1
    assert answers[0].RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS-ACC001"


# -- refusals ----------------------------------------------------------------------------


def _find(
    port: int, model: str, identifier: Dataset, aet: str = "WORKSTATION"
) -> list[tuple[int, Dataset, Dataset | None]]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    try:
        return [(int(s.Status), s, i) for s, i in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def _identifier(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("model", "keys", "status"),
    [
        (StudyRootQueryRetrieveInformationModelFind, {"PatientID": "P001"}, 0xA900),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "PATIENT", "PatientID": ""},
            0xA900,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "FRAME", "PatientID": ""},
            0xA900,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "SERIES", "Modality": "CT"},
            0xA900,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.*", "Modality": ""},
            0xA900,
        ),
        (
            PatientRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
            0xA900,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {
                "QueryRetrieveLevel": "SERIES",
                "StudyInstanceUID": "1.2.3",
                "ModalitiesInStudy": "CT",
            },
            0xA900,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01-01"},
            0xC000,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "STUDY", "StudyTime": "8 am"},
            0xC000,
        ),
    ],
    ids=[
        "no level",
        "patient level in study root",
        "unknown level",
        "series without study",
        "wildcard study uid",
        "patient root study without patient",
        "modalities in study below study level",
        "bad date",
        "bad time",
    ],
)
def test_malformed_identifiers_get_their_failure_status(
    qr: QrNode, model: str, keys: dict[str, str], status: int
) -> None:
    responses = _find(qr.scp.dicom_port, model, _identifier(**keys))
    [(code, rsp, identifier)] = responses
    assert code == status and identifier is None
    assert rsp.ErrorComment


def test_findscu_sees_the_failure_status(qr: QrNode) -> None:
    result, answers = findscu(qr, "-S", ["QueryRetrieveLevel=SERIES", "Modality=CT"], "-v")
    assert answers == []
    assert "Error: DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # 0xA900


def test_unsupported_information_model_is_refused_at_negotiation(qr: QrNode) -> None:
    """The Patient/Study Only model is not offered: findscu gets no presentation context and
    stops with an error."""
    result, answers = findscu(qr, "-O", ["QueryRetrieveLevel=PATIENT", "PatientID"])
    assert result.returncode != 0 and answers == []
    assert "No Acceptable Presentation Contexts" in result.stdout + result.stderr
    # ... and the SCP keeps answering.
    result, answers = findscu(qr, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=P002"])
    assert result.returncode == 0 and len(answers) == 1


def test_worklist_query_is_answered_sop_class_not_supported(qr: QrNode) -> None:
    """pynetdicom's unrestricted storage service lets Modality Worklist through negotiation
    (it has no name for its UID); the C-FIND is refused with 0x0122."""
    result, answers = findscu(qr, "-W", ["PatientName"], "-v")
    assert answers == []
    assert "Refused: SOPClassNotSupported" in result.stdout + result.stderr


def test_unsupported_optional_key_with_a_value_is_pending_warning(qr: QrNode) -> None:
    responses = _find(
        qr.scp.dicom_port,
        StudyRootQueryRetrieveInformationModelFind,
        _identifier(QueryRetrieveLevel="STUDY", PatientID="P002", InstitutionName="Elsewhere"),
    )
    assert [code for code, _, _ in responses] == [0xFF01, 0x0000]
    identifier = responses[0][2]
    assert identifier is not None
    assert identifier.InstitutionName == "Radnode General"  # returned, not matched


def test_c_find_is_audited_as_a_query(qr: QrNode) -> None:
    findscu(qr, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=P005", "PatientName"], aet="AUDITED")

    def logged() -> list[str]:
        return [
            line
            for log in (qr.scp.data_dir / "audit").glob("audit-*.log")
            for line in log.read_text().splitlines()
            if 'UserID="AUDITED"' in line
        ]

    [line] = wait_for(logged, timeout=10, what="the C-FIND audit message")
    assert 'csd-code="110112"' in line  # Query
    assert f'ParticipantObjectID="{StudyRootQueryRetrieveInformationModelFind}"' in line
    assert "ParticipantObjectQuery" in line and 'type="TransferSyntax"' in line


# -- cancel and the allow-list (their own nodes) -------------------------------------


def _many_studies(data_dir: Path, count: int) -> None:
    """``count`` one-instance CT studies of patients Many^PatientNNN (IDs MNNN)."""
    node = Node(Settings(data_dir=data_dir, fsync=False, audit_enabled=False))
    try:
        for i in range(count):
            spec = Spec(
                f"Many^Patient{i:03d}",
                f"M{i:03d}",
                "20240101",
                "120000",
                f"A{i}",
                "CT",
                (("CT", 1, "AX", 1),),
            )
            path = data_dir.parent / "in.dcm"
            path.write_bytes(
                part10(instance(spec, generate_uid(), generate_uid(), "CT", 1, "AX", 1))
            )
            node.ingestor.ingest(dataset_bytes(path), ExplicitVRLittleEndian, source="test")
    finally:
        node.close()


def test_c_cancel_stops_a_long_c_find(tmp_path: Path) -> None:
    """400 matches; the SCU sends C-CANCEL after the third: radnode stops and says 0xFE00."""
    _many_studies(tmp_path / "data", 400)
    scp = RadnodeProcess(tmp_path / "data", "scp").start()
    try:
        ae = AE(ae_title="WORKSTATION")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RADNODE")
        assert assoc.is_established
        context_id = assoc.accepted_contexts[0].context_id
        statuses: list[int] = []
        for status, _ in assoc.send_c_find(
            _identifier(QueryRetrieveLevel="STUDY", PatientName="Many*", PatientID=""),
            StudyRootQueryRetrieveInformationModelFind,
            msg_id=7,
        ):
            statuses.append(int(status.Status))
            if len(statuses) == 3:
                assoc.send_c_cancel(7, context_id)
        assoc.release()
        assert statuses[-1] == 0xFE00
        assert set(statuses[:-1]) == {0xFF00}
        assert 3 <= len(statuses) - 1 < 400
        wait_for(lambda: "C-FIND cancelled" in scp.log(), timeout=10, what="the cancel in the log")
        # findscu's own --cancel too.
        findscu_args = [
            require_tool("findscu"),
            "-aet",
            "WS",
            "-aec",
            "RADNODE",
            "-S",
            "--cancel",
            "5",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID",
            "127.0.0.1",
            str(scp.dicom_port),
        ]
        result = subprocess.run(
            findscu_args, capture_output=True, text=True, env=dcmtk_env(), timeout=60
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.stop()


def test_a_c_find_with_more_matches_than_the_limit_is_refused(tmp_path: Path) -> None:
    """30 studies, ``cfind_max_results`` 20: a query matching all 30 gets 0xA700 and no
    match; one matching 10 gets all 10; the association goes on."""
    _many_studies(tmp_path / "data", 30)
    scp = RadnodeProcess(
        tmp_path / "data", "scp", env={"RADNODE_CFIND_MAX_RESULTS": "20"}
    ).start()
    try:
        ae = AE(ae_title="WORKSTATION")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RADNODE")
        assert assoc.is_established
        try:
            everyone = [
                (int(status.Status), status.get("ErrorComment"), identifier)
                for status, identifier in assoc.send_c_find(
                    _identifier(QueryRetrieveLevel="STUDY", PatientID="M*"),
                    StudyRootQueryRetrieveInformationModelFind,
                )
            ]
            settle(assoc)
            ten = [
                int(status.Status)
                for status, _ in assoc.send_c_find(
                    _identifier(QueryRetrieveLevel="STUDY", PatientID="M01*"),
                    StudyRootQueryRetrieveInformationModelFind,
                )
            ]
        finally:
            assoc.release()
        assert everyone == [(0xA700, "more than 20 matches; narrow the query", None)]
        assert ten == [0xFF00] * 10 + [0x0000]
        assert "C-FIND refused: too many matches" in scp.log()
    finally:
        scp.stop()


def test_allow_list_applies_to_query_retrieve(tmp_path: Path) -> None:
    scp = RadnodeProcess(
        tmp_path / "data", "scp", env={"RADNODE_ALLOWED_CALLING_AETS": '["WORKSTATION"]'}
    ).start()
    try:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RADNODE")
        assert assoc.is_rejected
        responses = _find(
            scp.dicom_port,
            StudyRootQueryRetrieveInformationModelFind,
            _identifier(QueryRetrieveLevel="STUDY", PatientID=""),
        )
        assert [code for code, _, _ in responses] == [0x0000]  # admitted, nothing stored yet
    finally:
        scp.stop()
