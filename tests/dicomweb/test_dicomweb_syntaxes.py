"""WADO-RS over stored compressed and implicit-VR instances: frames, transfer syntaxes,
rendering."""

from __future__ import annotations

import email.parser
import email.policy

import httpx
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames

from tests.support.dicom_bytes import pydicom_test_file
from tests.support.dicomweb_studies import dicomweb_url
from tests.support.radnode_process import RadnodeProcess

J2K_MULTIFRAME = "emri_small_jpeg_2k_lossless.dcm"  # 10 frames, JPEG 2000 lossless
IMPLICIT = "MR_small_implicit.dcm"


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(content type, body) of each part of a multipart/related answer."""
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw + response.content)
    found = []
    for part in message.iter_parts():
        body = part.get_payload(decode=True)
        assert isinstance(body, bytes), part
        found.append((part.get_content_type(), body))
    return found


@pytest.fixture(scope="module")
def stored(api: RadnodeProcess) -> dict[str, Dataset]:
    client = DICOMwebClient(dicomweb_url(api))
    datasets: dict[str, Dataset] = {
        name: dcmread(pydicom_test_file(name)) for name in (J2K_MULTIFRAME, IMPLICIT)
    }
    answer = client.store_instances(list(datasets.values()))
    assert "FailedSOPSequence" not in answer, answer
    return datasets


def url_of(api: RadnodeProcess, ds: Dataset) -> str:
    return (
        f"{dicomweb_url(api)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def test_compressed_frames(api: RadnodeProcess, stored: dict[str, Dataset]) -> None:
    ds = stored[J2K_MULTIFRAME]
    url = url_of(api, ds)
    encapsulated = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))

    as_stored = httpx.get(
        f"{url}/frames/2,5",
        headers={"Accept": 'multipart/related; type="image/jp2"; transfer-syntax=*'},
    )
    assert as_stored.status_code == 200
    got = parts(as_stored)
    assert [t for t, _ in got] == ["image/jp2", "image/jp2"]
    assert [b for _, b in got] == [encapsulated[1], encapsulated[4]]

    decoded = httpx.get(
        f"{url}/frames/3",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert decoded.status_code == 200
    (kind, body), = parts(decoded)
    assert kind == "application/octet-stream"
    assert body == ds.pixel_array[2].tobytes()

    assert httpx.get(f"{url}/frames/11").status_code == 404
    rendered = httpx.get(f"{url}/frames/3/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.content[:4] == b"\x89PNG"

    # No transcoding from a compressed syntax: 406 with a reason.
    refused = httpx.get(
        url,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.1"
        },
    )
    assert refused.status_code == 406 and refused.json()["detail"]


def test_implicit_to_explicit(api: RadnodeProcess, stored: dict[str, Dataset]) -> None:
    ds = stored[IMPLICIT]
    response = httpx.get(
        url_of(api, ds),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.1"
        },
    )
    assert response.status_code == 200
    (kind, body), = parts(response)
    assert kind == "application/dicom"
    from io import BytesIO

    sent = dcmread(BytesIO(body))
    assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(sent.pixel_array, ds.pixel_array)
    assert sent.PatientName == ds.PatientName


def test_series_rendered_and_warning(
    api: RadnodeProcess,
    stored: dict[str, Dataset],
) -> None:
    ds = stored[IMPLICIT]
    base = dicomweb_url(api)
    response = httpx.get(
        f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered",
        headers={"Accept": "image/jpeg"},
    )
    assert response.status_code == 200
    assert [t for t, _ in parts(response)] == ["image/jpeg"]

    # An attribute the index does not keep: returned (from the file), not matched, warned.
    found = httpx.get(f"{base}/instances?SOPInstanceUID={ds.SOPInstanceUID}&PatientAge=999Y")
    assert found.status_code == 200
    assert "PatientAge" in found.headers["warning"]
    assert len(found.json()) == 1

    everything = httpx.get(f"{base}/studies/{ds.StudyInstanceUID}/instances?includefield=all")
    item = everything.json()[0]
    assert item["00100020"]["Value"] == [ds.PatientID]  # study level, from the index
    assert item["00280010"]["Value"] == [ds.Rows]


def test_decompression_bomb_refused(api: RadnodeProcess) -> None:
    """A compressed image whose header claims a huge frame is not decoded (400), the server fine."""
    from pydicom.uid import generate_uid

    ds = dcmread(pydicom_test_file(J2K_MULTIFRAME))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows = ds.Columns = 60000
    client = DICOMwebClient(dicomweb_url(api))
    answer = client.store_instances([ds])
    assert "FailedSOPSequence" not in answer
    url = url_of(api, ds)
    raw = httpx.get(
        f"{url}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert raw.status_code == 400 and "limit" in raw.json()["detail"]
    assert httpx.get(f"{url}/rendered").status_code == 400
    assert httpx.get(f"{dicomweb_url(api)}/studies?limit=1").status_code == 200
