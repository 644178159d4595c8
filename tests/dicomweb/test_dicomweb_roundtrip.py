"""dicomweb-client against a running `radnode api`: STOW, QIDO at three levels, WADO-RS."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread

from tests.support.dicomweb_studies import dicomweb_url
from tests.support.radnode_process import RadnodeProcess

SLICES = 8


@pytest.fixture(scope="module")
def stored(
    api: RadnodeProcess,
    chest_study: tuple[object, list[Path]],
) -> tuple[DICOMwebClient, list[Path]]:
    """The first slices of the synthetic chest study, stored with STOW-RS."""
    _, paths = chest_study
    files = sorted(paths)[:SLICES]
    client = DICOMwebClient(dicomweb_url(api))
    answer = client.store_instances([dcmread(p) for p in files])
    referenced = answer.get("ReferencedSOPSequence", [])
    assert len(referenced) == SLICES
    url = referenced[0].RetrieveURL
    assert url.startswith(client.base_url) and "/series/" in url and "/instances/" in url
    assert "FailedSOPSequence" not in answer
    return client, files


def test_search_three_levels(stored: tuple[DICOMwebClient, list[Path]]) -> None:
    client, files = stored
    first = dcmread(files[0], stop_before_pixels=True)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID

    found = client.search_for_studies(search_filters={"PatientID": first.PatientID})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00201208"]["Value"] == [SLICES]  # NumberOfStudyRelatedInstances
    assert found[0]["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert found[0]["00100010"]["Value"][0]["Alphabetic"] == str(first.PatientName)

    name = str(first.PatientName)
    assert client.search_for_studies(search_filters={"PatientName": name.lower()[:4] + "*"})
    assert client.search_for_studies(
        search_filters={
            "StudyDate": f"{first.StudyDate}-{first.StudyDate}", "ModalitiesInStudy": "CT"
        }
    )
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19000102"}) == []
    assert client.search_for_studies(search_filters={"PatientID": "no-such-patient"}) == []

    all_series = client.search_for_series(search_filters={"Modality": "CT"})
    assert series in {s["0020000E"]["Value"][0] for s in all_series}
    in_study = client.search_for_series(
        study, search_filters={"SeriesNumber": str(first.SeriesNumber)}
    )
    assert [s["0020000E"]["Value"][0] for s in in_study] == [series]
    assert in_study[0]["00201209"]["Value"] == [SLICES]  # NumberOfSeriesRelatedInstances

    instances = client.search_for_instances(study, series)
    assert {i["00080018"]["Value"][0] for i in instances} == {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files
    }
    assert instances[0]["00280010"]["Value"] == [first.Rows]
    page = client.search_for_instances(study, series, limit=3, offset=2)
    assert len(page) == 3
    one = client.search_for_instances(
        search_filters={"SOPInstanceUID": first.SOPInstanceUID, "includefield": "SliceThickness"}
    )
    assert len(one) == 1 and "00180050" in one[0]  # from the file: not in the index
    everything = client.search_for_instances(study, series, search_filters={"includefield": "all"})
    assert everything[0]["00100020"]["Value"] == [first.PatientID]


def test_retrieve_bytes_equal(stored: tuple[DICOMwebClient, list[Path]]) -> None:
    client, files = stored
    first = dcmread(files[0], stop_before_pixels=True)
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in files}

    retrieved = client.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert len(retrieved) == SLICES
    for ds in retrieved:
        original = originals[ds.SOPInstanceUID]
        assert ds.PixelData == original.PixelData
        assert ds.PatientName == original.PatientName

    instance = client.retrieve_instance(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert instance.PixelData == originals[first.SOPInstanceUID].PixelData

    # The stored file's dataset is the one the sender sent, byte for byte.
    url = (
        f"{client.base_url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    assert files[0].read_bytes()[-100_000:] in response.content

    frames = client.retrieve_instance_frames(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, [1]
    )
    assert frames[0] == originals[first.SOPInstanceUID].PixelData


def test_metadata(stored: tuple[DICOMwebClient, list[Path]]) -> None:
    client, files = stored
    first = dcmread(files[0], stop_before_pixels=True)
    series_md = client.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert len(series_md) == SLICES
    study_md = client.retrieve_study_metadata(first.StudyInstanceUID)
    assert len(study_md) == SLICES
    md = client.retrieve_instance_metadata(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert md["00080018"]["Value"] == [first.SOPInstanceUID]
    uri = md["7FE00010"]["BulkDataURI"]
    assert uri.startswith(client.base_url)
    bulk = client.retrieve_bulkdata(uri)
    assert bulk[0] == dcmread(files[0]).PixelData


def test_rendered_and_thumbnail(stored: tuple[DICOMwebClient, list[Path]]) -> None:
    client, files = stored
    first = dcmread(files[0], stop_before_pixels=True)
    base = f"{client.base_url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    instance = f"{base}/instances/{first.SOPInstanceUID}"
    jpeg = httpx.get(f"{instance}/rendered", headers={"Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
    png = httpx.get(f"{instance}/rendered?window=-600,1500", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(f"{instance}/frames/1/rendered").status_code == 200
    for url in (f"{base}/thumbnail", f"{instance}/thumbnail",
                f"{client.base_url}/studies/{first.StudyInstanceUID}/thumbnail"):
        thumb = httpx.get(url, headers={"Accept": "image/png"})
        assert thumb.status_code == 200 and thumb.content[:4] == b"\x89PNG"
    assert httpx.get(f"{instance}/rendered?window=abc").status_code == 400
