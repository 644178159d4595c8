"""C-FIND and C-GET with a PostgreSQL index: the same answers as with SQLite (LIKE instead of
GLOB for wildcards, window functions for the PATIENT level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.support.postgres import PostgresServer
from tests.support.qr_studies import write_studies
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu

QUERIES = [
    (PatientRootQueryRetrieveInformationModelFind, "PATIENT", {"PatientName": "doe*"}),
    (PatientRootQueryRetrieveInformationModelFind, "PATIENT", {"PatientID": "P00?"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"PatientName": "*JOHN*"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"StudyDate": "20240101-20240131"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"AccessionNumber": "ACC0?%"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"AccessionNumber": "X-_"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"ModalitiesInStudy": "CT\\MR"}),
    (StudyRootQueryRetrieveInformationModelFind, "STUDY", {"StudyTime": "-1200"}),
]


def _find(port: int, model: str, level: str, filters: dict[str, str]) -> list[tuple]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in ("PatientID", "PatientName", "NumberOfPatientRelatedStudies"):
        setattr(identifier, keyword, "")
    if level == "STUDY":
        identifier.StudyInstanceUID = ""
        identifier.ModalitiesInStudy = ""
    for keyword, value in filters.items():
        setattr(identifier, keyword, value)
    try:
        answers = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    assert int(answers[-1][0].Status) == 0x0000
    return sorted(
        tuple(str(ds.get(k, "")) for k in sorted(ds.dir()) if k != "RetrieveAETitle")
        for _, ds in answers[:-1]
        if ds is not None
    )


def _get(port: int, study_uid: str) -> int:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(cast(C_STORE, event.request).AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in (CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    roles: list[Any] = [
        build_role(c, scp_role=True) for c in (CTImageStorage, SecondaryCaptureImageStorage)
    ]
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="RADNODE",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        *_, (final, _) = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
    finally:
        assoc.release()
    assert final.Status == 0x0000
    return len(received)


@pytest.mark.slow
def test_postgresql_index_answers_as_sqlite_does(tmp_path: Path) -> None:
    studies = write_studies(tmp_path / "in")
    with PostgresServer() as pg:
        on_pg = RadnodeProcess(tmp_path / "pg", "scp", "--database-url", pg.url)
        on_sqlite = RadnodeProcess(tmp_path / "sqlite", "scp")
        try:
            for node in (on_pg, on_sqlite):
                node.start()
                assert storescu(node.dicom_port, studies.files).returncode == 0
            assert not (tmp_path / "pg" / "index.sqlite3").exists()
            for model, level, filters in QUERIES:
                ours = _find(on_pg.dicom_port, model, level, filters)
                assert ours == _find(on_sqlite.dicom_port, model, level, filters), filters
            # Characters LIKE would read as wildcards are matched literally.
            assert _find(on_pg.dicom_port, *QUERIES[4]) == []
            assert _find(on_pg.dicom_port, *QUERIES[5]) == []
            assert len(_find(on_pg.dicom_port, *QUERIES[0])) == 3  # P001, P002, P003
            first = studies.study_uids[0]
            expected = sum(1 for d in studies.datasets if d.StudyInstanceUID == first)
            assert _get(on_pg.dicom_port, first) == expected
        finally:
            on_pg.stop()
            on_sqlite.stop()
