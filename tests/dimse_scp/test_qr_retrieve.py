"""C-MOVE and C-GET against `radnode scp`: dcmtk movescu with Orthanc as the Move
Destination, dcmtk getscu receiving the stored bytes unchanged, pynetdicom SCUs for the
sub-operation counts, failures, transfer syntax conversion, cancellation and the audit."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ai_node.synth import StudySpec, write_study
from pacs_link.scu import send_files
from tests.support.dicom_bytes import dataset_bytes, pydicom_test_file
from tests.support.dicomweb_peer import OrthancDicomWeb
from tests.support.qr_studies import Studies, write_studies
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for


@dataclass
class Retrieval:
    scp: RadnodeProcess
    orthanc: OrthancDicomWeb
    studies: Studies  # varied small studies (sequences, several series)
    ct_uid: str  # a 12-slice synthetic CT study
    ct_files: list[Path]
    work: Path

    def stored(self) -> dict[str, Path]:
        """SOP Instance UID -> the file radnode stored."""
        return {p.stem: p for p in (self.scp.data_dir / "studies").rglob("*.dcm")}


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retrieval]:
    root = tmp_path_factory.mktemp("qr-retrieve")
    orthanc = OrthancDicomWeb(root / "orthanc").start()
    destinations = [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    scp = RadnodeProcess(
        root / "data", "scp", env={"RADNODE_MOVE_DESTINATIONS": json.dumps(destinations)}
    )
    try:
        scp.start()
        studies = write_studies(root / "varied")
        study, files = write_study(
            StudySpec(region="chest", slices=12, seed=41, rows=64, columns=64), root / "ct"
        )
        for batch in (studies.files, files):
            sent = storescu(scp.dicom_port, batch)
            assert sent.returncode == 0, sent.stderr
        yield Retrieval(scp, orthanc, studies, study.study_instance_uid, files, root)
    finally:
        scp.stop()
        orthanc.stop()


def _orthanc_raw(orthanc: OrthancDicomWeb, path: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(
        f"{orthanc.rest}{path}", data=data, method="POST" if data is not None else "GET"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _orthanc(orthanc: OrthancDicomWeb, path: str, data: bytes | None = None) -> Any:
    return json.loads(_orthanc_raw(orthanc, path, data))


def _orthanc_file(orthanc: OrthancDicomWeb, sop_uid: str, out: Path) -> Path:
    """The Part 10 file Orthanc holds for ``sop_uid``, written to ``out``."""
    [found] = _orthanc(orthanc, "/tools/lookup", sop_uid.encode())
    out.write_bytes(_orthanc_raw(orthanc, f"/instances/{found['ID']}/file"))
    return out


def _dcmtk(
    tool: str,
    node: RadnodeProcess,
    *args: str,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool(tool),
            "-v",
            "-aet",
            "WORKSTATION",
            "-aec",
            "RADNODE",
            *args,
            "127.0.0.1",
            str(node.dicom_port),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
        cwd=cwd,
    )


def _keys(**keys: str) -> list[str]:
    return [arg for k, v in keys.items() for arg in ("-k", f"{k}={v}")]


def _identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _move(
    port: int,
    identifier: Dataset,
    destination: str = "ORTHANC",
    model: str = StudyRootQueryRetrieveInformationModelMove,
) -> list[Dataset]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    try:
        out = []
        for status, failed in assoc.send_c_move(identifier, destination, model):
            if failed is not None:
                status.update(failed)
            out.append(status)
        return out
    finally:
        assoc.release()


# -- C-MOVE --------------------------------------------------------------------------------


def test_movescu_sends_a_study_to_orthanc_as_stored(retrieval: Retrieval, tmp_path: Path) -> None:
    result = _dcmtk(
        "movescu",
        retrieval.scp,
        "-S",
        "-aem",
        "ORTHANC",
        *_keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.ct_uid),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Final Move Response (Success)" in result.stderr
    stored = retrieval.stored()
    for path in retrieval.ct_files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        received = _orthanc_file(retrieval.orthanc, uid, tmp_path / f"{uid}.dcm")
        assert dataset_bytes(received) == dataset_bytes(stored[uid])


def test_c_move_counts_sub_operations_in_pending_responses(retrieval: Retrieval) -> None:
    index = 2  # two MR series of two instances
    responses = _move(
        retrieval.scp.dicom_port,
        _identifier(
            QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.studies.study_uids[index]
        ),
    )
    pending, final = responses[:-1], responses[-1]
    assert [r.Status for r in pending] == [0xFF00] * 4
    assert [r.NumberOfRemainingSuboperations for r in pending] == [3, 2, 1, 0]
    assert [r.NumberOfCompletedSuboperations for r in pending] == [1, 2, 3, 4]
    assert final.Status == 0x0000
    assert (
        final.NumberOfCompletedSuboperations,
        final.NumberOfFailedSuboperations,
        final.NumberOfWarningSuboperations,
    ) == (4, 0, 0)
    study = retrieval.studies.study_uids[index]
    found = _orthanc(
        retrieval.orthanc,
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study}}).encode(),
    )
    assert len(found) == 4


def test_patient_root_patient_level_move(retrieval: Retrieval) -> None:
    responses = _move(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="PATIENT", PatientID="P001"),
        model=PatientRootQueryRetrieveInformationModelMove,
    )
    final = responses[-1]
    assert final.Status == 0x0000
    # P001 has two studies: 3 CT + 1 SR, and 2 CT.
    assert final.NumberOfCompletedSuboperations == 6


def test_unknown_move_destination_is_a801(retrieval: Retrieval) -> None:
    result = _dcmtk(
        "movescu",
        retrieval.scp,
        "-S",
        "-aem",
        "NOWHERE",
        *_keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.ct_uid),
    )
    assert "MoveDestinationUnknown" in result.stderr
    [final] = _move(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.ct_uid),
        destination="NOWHERE",
    )
    assert final.Status == 0xA801


@pytest.mark.parametrize(
    "keys",
    [
        {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.3"},  # no Study Instance UID
        {"QueryRetrieveLevel": "STUDY"},  # no Study Instance UID at its own level
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"},  # no wildcards
        {"StudyInstanceUID": "1.2.3"},  # no level
    ],
    ids=["series without study", "study without uid", "wildcard", "no level"],
)
def test_refused_move_identifiers_are_a900(retrieval: Retrieval, keys: dict[str, str]) -> None:
    final = _move(retrieval.scp.dicom_port, _identifier(**keys))[-1]
    assert final.Status == 0xA900 and final.ErrorComment


def test_a_sub_operation_that_fails_gives_b000_and_its_uid(
    retrieval: Retrieval, tmp_path: Path
) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=4, seed=42, rows=32, columns=32), tmp_path / "ct"
    )
    assert storescu(retrieval.scp.dicom_port, files).returncode == 0
    stored = retrieval.stored()
    lost = str(dcmread(files[1], stop_before_pixels=True).SOPInstanceUID)
    stored[lost].unlink()  # the file is gone, the index still lists it
    responses = _move(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_instance_uid),
    )
    final = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 1)
    assert final.FailedSOPInstanceUIDList == lost  # one UID: a single value
    assert "stored file unreadable" in retrieval.scp.log()


def test_c_move_is_audited_with_its_destination(retrieval: Retrieval) -> None:
    _move(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.studies.study_uids[1]),
    )

    def audited() -> list[str]:
        return [
            line
            for log in (retrieval.scp.data_dir / "audit").glob("audit-*.log")
            for line in log.read_text().splitlines()
            if "C-MOVE: 2 sent" in line and retrieval.studies.study_uids[1] in line
        ]

    [line] = wait_for(audited, timeout=10, what="the C-MOVE audit message")
    assert 'csd-code="110104"' in line and 'EventActionCode="R"' in line
    assert 'UserID="ORTHANC"' in line and 'UserID="WORKSTATION"' in line


# -- C-GET ---------------------------------------------------------------------------------


def test_getscu_receives_the_stored_bytes(retrieval: Retrieval, tmp_path: Path) -> None:
    """getscu +B writes what it receives as received: the same dataset bytes radnode stored
    (sequences, several series, a UTF-8 name)."""
    stored = retrieval.stored()
    for index, study_uid in enumerate(retrieval.studies.study_uids):
        out = tmp_path / f"get{index}"
        out.mkdir()
        result = _dcmtk(
            "getscu",
            retrieval.scp,
            "-S",
            "+B",
            "-od",
            str(out),
            *_keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid),
        )
        assert result.returncode == 0, result.stderr
        received = sorted(out.iterdir())
        expected = [d for d in retrieval.studies.datasets if d.StudyInstanceUID == study_uid]
        assert len(received) == len(expected)
        for path in received:
            assert dataset_bytes(path) == dataset_bytes(stored[path.name]), path.name
        assert "Number of Completed Suboperations : " + str(len(expected)) in result.stderr


def test_getscu_image_level_list_of_instances(retrieval: Retrieval, tmp_path: Path) -> None:
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in retrieval.ct_files]
    series_uid = str(dcmread(retrieval.ct_files[0], stop_before_pixels=True).SeriesInstanceUID)
    result = _dcmtk(
        "getscu",
        retrieval.scp,
        "-S",
        "+B",
        "-od",
        str(tmp_path),
        *_keys(
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID=retrieval.ct_uid,
            SeriesInstanceUID=series_uid,
            SOPInstanceUID="\\".join(uids[2:5]),
        ),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(uids[2:5])


def _get(
    port: int, identifier: Dataset, contexts: list[tuple[str, str]], cancel_after: int | None = None
) -> tuple[list[Dataset], list[Dataset]]:
    """C-GET as a pynetdicom SCU taking the Storage SCP role for ``contexts``; returns the
    responses and the datasets received."""
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    roles: list[Any] = [build_role(c, scp_role=True) for c in {c for c, _ in contexts}]
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="RADNODE",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    responses: list[Dataset] = []
    try:
        get_context = next(
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet
        )
        for status, failed in assoc.send_c_get(
            identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=9
        ):
            if failed is not None:
                status.update(failed)
            responses.append(status)
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(9, get_context.context_id)
    finally:
        assoc.release()
    return responses, received


def test_c_get_decompresses_for_a_peer_that_takes_only_uncompressed(
    retrieval: Retrieval, tmp_path: Path
) -> None:
    source = Path(pydicom_test_file("MR_small_RLE.dcm"))
    original = dcmread(source)
    assert original.file_meta.TransferSyntaxUID == RLELossless
    sent = send_files([source], "127.0.0.1", retrieval.scp.dicom_port, "MODALITY", "RADNODE")
    assert sent == {source: 0x0000}  # stored as sent: RLE Lossless
    identifier = _identifier(
        QueryRetrieveLevel="STUDY", StudyInstanceUID=str(original.StudyInstanceUID)
    )
    # Offered RLE: sent as stored.
    responses, [ds] = _get(retrieval.scp.dicom_port, identifier, [(MRImageStorage, RLELossless)])
    assert responses[-1].Status == 0x0000
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.PixelData == original.PixelData
    # Offered only Explicit VR Little Endian: decompressed.
    responses, [ds] = _get(
        retrieval.scp.dicom_port, identifier, [(MRImageStorage, ExplicitVRLittleEndian)]
    )
    assert responses[-1].Status == 0x0000
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.pixel_array == original.pixel_array).all()


def test_c_get_fails_what_the_peer_cannot_take(retrieval: Retrieval) -> None:
    """The CT study is stored uncompressed; a requestor taking only JPEG-LS gets nothing:
    every sub-operation failed (0xA702), each UID listed, the reason in radnode's log."""
    responses, received = _get(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.ct_uid),
        [(CTImageStorage, JPEGLSLossless)],
    )
    final = responses[-1]
    assert received == []
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == len(retrieval.ct_files)
    assert len(final.FailedSOPInstanceUIDList) == len(retrieval.ct_files)
    assert "accepted only JPEG-LS Lossless" in retrieval.scp.log()


def test_c_get_refused_identifier_is_a900(retrieval: Retrieval) -> None:
    responses, received = _get(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="SERIES", Modality="CT"),
        [(CTImageStorage, ExplicitVRLittleEndian)],
    )
    assert received == [] and responses[-1].Status == 0xA900


def test_c_cancel_stops_a_c_get(retrieval: Retrieval) -> None:
    responses, received = _get(
        retrieval.scp.dicom_port,
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=retrieval.ct_uid),
        [
            (CTImageStorage, ExplicitVRLittleEndian),
            (SecondaryCaptureImageStorage, ExplicitVRLittleEndian),
        ],
        cancel_after=2,
    )
    final = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert len(received) < len(retrieval.ct_files)
    assert final.NumberOfCompletedSuboperations == len(received)
