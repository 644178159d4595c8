"""Our QIDO-RS matching agrees with Orthanc's DICOMweb plugin on the same studies.

Both servers get the same varied studies by STOW-RS; each query's set of matches
(study, series or SOP Instance UIDs) must be the same on both.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from dicomweb_client import DICOMwebClient

from tests.support.dicomweb_peer import OrthancDicomWeb
from tests.support.dicomweb_studies import CT_IMAGE, VariedStudies, dicomweb_url
from tests.support.postgres import PostgresServer
from tests.support.radnode_process import RadnodeProcess


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancDicomWeb]:
    peer = OrthancDicomWeb(tmp_path_factory.mktemp("orthanc")).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def clients(
    api: RadnodeProcess,
    orthanc: OrthancDicomWeb,
    varied_studies: VariedStudies,
) -> tuple[DICOMwebClient, DICOMwebClient]:
    ours = DICOMwebClient(dicomweb_url(api))
    theirs = DICOMwebClient(orthanc.url)
    for client in (ours, theirs):
        answer = client.store_instances(varied_studies.datasets)
        assert len(answer.ReferencedSOPSequence) == len(varied_studies.datasets)
    return ours, theirs


KEY = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}


def _queries(v: VariedStudies) -> list[tuple[str, str | None, str | None, dict[str, str]]]:
    """(level, study, series, filters): study and series are index placeholders resolved later."""
    s0, s2, s4 = v.study_uids[0], v.study_uids[2], v.study_uids[4]
    s2_series = sorted({d.SeriesInstanceUID for d in v.of_study(2)})
    return [
        ("study", None, None, {"PatientID": "P001"}),
        ("study", None, None, {"PatientID": "P00*"}),
        ("study", None, None, {"PatientID": "P00?"}),
        ("study", None, None, {"PatientName": "Doe^John"}),
        ("study", None, None, {"PatientName": "DOE^JOHN"}),
        ("study", None, None, {"PatientName": "doe*"}),
        ("study", None, None, {"PatientName": "*john*"}),
        ("study", None, None, {"PatientName": "Smith^Ann?"}),
        ("study", None, None, {"StudyDate": "20240101-20240131"}),
        ("study", None, None, {"StudyDate": "-20231231"}),
        ("study", None, None, {"StudyDate": "20240201-"}),
        ("study", None, None, {"StudyDate": "20240115"}),
        ("study", None, None, {"StudyTime": "080000-120000"}),
        ("study", None, None, {"StudyTime": "-0900"}),
        ("study", None, None, {"AccessionNumber": "ACC00?"}),
        ("study", None, None, {"AccessionNumber": "ACC*"}),
        ("study", None, None, {"StudyDescription": "CT*"}),
        ("study", None, None, {"StudyID": "S3"}),
        ("study", None, None, {"ReferringPhysicianName": "Smith^Ann"}),
        ("study", None, None, {"ModalitiesInStudy": "MR"}),
        ("study", None, None, {"ModalitiesInStudy": "CT"}),
        ("study", None, None, {"ModalitiesInStudy": "SR"}),
        ("study", None, None, {"StudyInstanceUID": f"{s0},{s4}"}),
        ("study", None, None, {"PatientID": "P001", "StudyDate": "20240201-20241231"}),
        ("study", None, None, {"PatientName": "doe*", "ModalitiesInStudy": "MR"}),
        ("series", None, None, {"Modality": "CT"}),
        ("series", None, None, {"Modality": "MR"}),
        ("series", None, None, {"SeriesNumber": "2"}),
        ("series", None, None, {"SeriesDescription": "AI*"}),
        ("series", None, None, {"SeriesInstanceUID": ",".join(s2_series)}),
        ("series", s0, None, {}),
        ("series", s4, None, {"Modality": "SEG"}),
        ("series", None, None, {"PatientID": "P001"}),
        ("instance", None, None, {"SOPClassUID": CT_IMAGE}),
        ("instance", None, None, {"InstanceNumber": "2"}),
        ("instance", s2, None, {}),
        ("instance", s2, s2_series[0], {}),
        ("instance", None, None, {"PatientID": "P003"}),
    ]


def _uids(base: str, level: str, study: str | None, series: str | None,
          filters: dict[str, str]) -> set[str]:
    # Orthanc 1.10 does not percent-decode query values ("P00%2A" matches nothing), so
    # the query string goes out raw (httpx keeps * ^ and \ as they are); we decode both.
    path = {"study": "/studies", "series": "/series", "instance": "/instances"}[level]
    if level == "series" and study:
        path = f"/studies/{study}/series"
    if level == "instance" and study:
        path = f"/studies/{study}" + (f"/series/{series}" if series else "") + "/instances"
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    response = httpx.get(f"{base}{path}" + (f"?{query}" if query else ""), timeout=30)
    assert response.status_code in (200, 204), (base, path, query, response.text)
    found = response.json() if response.status_code == 200 else []
    return {item[KEY[level]]["Value"][0] for item in found}


def test_same_matches_as_orthanc(
    clients: tuple[DICOMwebClient, DICOMwebClient],
    varied_studies: VariedStudies,
) -> None:
    ours, theirs = clients
    queries = _queries(varied_studies)
    assert len(queries) >= 20
    differences = []
    nonempty = 0
    for level, study, series, filters in queries:
        mine = _uids(ours.base_url, level, study, series, filters)
        reference = _uids(theirs.base_url, level, study, series, filters)
        nonempty += bool(reference)
        if mine != reference:
            differences.append((level, study, series, filters, len(mine), len(reference)))
    assert not differences, "\n".join(map(str, differences))
    assert nonempty >= 20  # the queries do select something


def test_request_attributes_sequence_matching(
    clients: tuple[DICOMwebClient, DICOMwebClient],
    varied_studies: VariedStudies,
) -> None:
    """Sequence matching keys (not compared: Orthanc does not match on sequences)."""
    ours, _ = clients
    ct_series = {d.SeriesInstanceUID for d in varied_studies.datasets if d.Modality == "CT"}
    found = ours.search_for_series(
        search_filters={"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-S?"}
    )
    assert {s["0020000E"]["Value"][0] for s in found} == ct_series
    found = ours.search_for_series(
        search_filters={"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-S7"}
    )
    assert len(found) == 1
    found = ours.search_for_series(search_filters={"00400275.00401001": "RP-ACC001"})
    assert len(found) == 1
    item = found[0]["00400275"]["Value"][0]
    assert item["00400009"]["Value"] == ["SPS-S1"] and item["00401001"]["Value"] == ["RP-ACC001"]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free loopback port; its URL for radnode."""
    with PostgresServer() as pg:
        yield pg.url


@pytest.mark.slow
def test_same_matches_on_postgresql(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    orthanc: OrthancDicomWeb,
    clients: tuple[DICOMwebClient, DICOMwebClient],
    varied_studies: VariedStudies,
) -> None:
    """The LIKE (not GLOB) matching of a PostgreSQL index agrees with Orthanc too."""
    root = tmp_path_factory.mktemp("dicomweb-pg")
    node = RadnodeProcess(root / "data", "api", "--database-url", postgres_url).start()
    try:
        assert not (root / "data" / "index.sqlite3").exists()
        ours = DICOMwebClient(dicomweb_url(node))
        ours.store_instances(varied_studies.datasets)
        differences = [
            (level, filters)
            for level, study, series, filters in _queries(varied_studies)
            if _uids(ours.base_url, level, study, series, filters)
            != _uids(orthanc.url, level, study, series, filters)
        ]
        assert not differences, differences
    finally:
        node.stop()
