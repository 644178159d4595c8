"""The upload page's API: a zip of DICOM (non-DICOM files reported and skipped, a zip bomb
refused whole), a JPEG/PNG made a Secondary Capture (a patient ID required), the instances
already stored, and the viewer role refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage

from ai_node.pipeline import AnalysisPipeline
from ai_node.synth import StudySpec, write_study
from dicomweb.app import create_app
from tests.support.analysis import run_all, study_result
from tests.support.viewer import ADMIN, RADIOLOGIST, VIEWER, make_node

MODALITY = "modality-token-0123456789"


@pytest.fixture
def client(tmp_path: Path):
    node = make_node(tmp_path / "data", auth=True, upload_max_zip_bytes=8 * 1024 * 1024)
    node.settings.api_tokens[MODALITY] = "modality"
    with TestClient(create_app(node)) as c:
        c.node = node  # type: ignore[attr-defined]
        yield c
    node.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _study_files(out: Path, seed: int = 11) -> list[Path]:
    _, files = write_study(
        StudySpec(region="chest", slices=4, nodules=0, seed=seed, rows=64, columns=64), out
    )
    return list(files)


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(mode: str = "L") -> bytes:
    pixels = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    img = Image.fromarray(pixels) if mode == "L" else Image.fromarray(np.dstack([pixels] * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_zip_stores_dicom_and_reports_other_files_skipped(client, tmp_path) -> None:
    files = _study_files(tmp_path / "study")
    entries = {f"scan/{f.name}": f.read_bytes() for f in files}
    entries["scan/notes.txt"] = b"not an image"
    entries["scan/DICOMDIR-like.bin"] = b"\0" * 200
    r = client.post(
        "/api/upload/zip",
        content=_zip(entries),
        headers=_auth(MODALITY) | {"Content-Type": "application/zip"},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["counts"] == {"stored": len(files), "skipped": 2}
    skipped = {f["name"]: f["explanation"] for f in answer["files"] if f["outcome"] == "skipped"}
    assert set(skipped) == {"scan/notes.txt", "scan/DICOMDIR-like.bin"}
    assert all("not a DICOM file" in why for why in skipped.values())
    uids = [f["sop_instance_uid"] for f in answer["files"] if f["outcome"] == "stored"]
    known = client.post(
        "/api/upload/known",
        json={"sop_instance_uids": uids + ["1.2.3.4"]},
        headers=_auth(MODALITY),
    )
    assert known.status_code == 200 and known.json()["known"] == sorted(uids)
    # sent again (a resumed upload): nothing stored twice
    again = client.post(
        "/api/upload/zip",
        content=_zip(entries),
        headers=_auth(RADIOLOGIST) | {"Content-Type": "application/zip"},
    )
    assert again.json()["counts"] == {"already stored": len(files), "skipped": 2}
    study_uid = answer["files"][0]["study_uid"]
    assert client.node.index.get_study(study_uid)["num_instances"] == len(files)  # type: ignore[attr-defined]


def test_a_broken_dicom_file_in_a_zip_fails_with_its_reason_in_words(client) -> None:
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00garbage"
    r = client.post(
        "/api/upload/zip",
        content=_zip({"bad.dcm": broken}),
        headers=_auth(MODALITY) | {"Content-Type": "application/zip"},
    )
    assert r.status_code == 200, r.text
    [item] = r.json()["files"]
    assert (item["outcome"], item["failure_reason"]) == ("failed", 0xC000)
    assert item["explanation"].startswith("Cannot understand")


def test_zip_bomb_is_refused_before_anything_is_stored(client, tmp_path) -> None:
    files = _study_files(tmp_path / "study", seed=12)
    dicom = {f.name: f.read_bytes() for f in files}
    bomb = _zip(dicom | {"zeros.dcm": b"\0" * (24 * 1024 * 1024)})  # ~1000x, over the total too
    r = client.post(
        "/api/upload/zip", content=bomb, headers=_auth(ADMIN) | {"Content-Type": "application/zip"}
    )
    assert r.status_code == 413, r.text
    assert "upload_max_zip" in r.json()["detail"]
    ratio_only = _zip(dicom | {"zeros.dcm": b"\0" * (4 * 1024 * 1024)})  # under the total cap
    r = client.post(
        "/api/upload/zip",
        content=ratio_only,
        headers=_auth(ADMIN) | {"Content-Type": "application/zip"},
    )
    assert r.status_code == 413 and "zip bomb" in r.json()["detail"]
    assert client.node.index.counts()["instances"] == 0  # type: ignore[attr-defined]
    r = client.post(
        "/api/upload/zip",
        content=b"PK\x03\x04 not really",
        headers=_auth(ADMIN) | {"Content-Type": "application/zip"},
    )
    assert r.status_code == 413 and "not a readable zip" in r.json()["detail"]


def test_image_becomes_a_secondary_capture_that_is_queued(client) -> None:
    r = client.post(
        "/api/upload/image",
        params={
            "patient_id": "UP-1",
            "patient_name": "Upload^Ann",
            "study_description": "photo of a film",
            "modality": "CR",
        },
        content=_png(),
        headers=_auth(MODALITY) | {"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    [item] = r.json()["files"]
    assert item["outcome"] == "stored"
    node = client.node  # type: ignore[attr-defined]
    row = node.index.find_instance(item["sop_instance_uid"])
    assert row is not None and row["sop_class_uid"] == SecondaryCaptureImageStorage
    ds = dcmread(node.store.path_of(row["path"]))
    assert (ds.PatientID, str(ds.PatientName), ds.Modality) == ("UP-1", "Upload^Ann", "CR")
    assert ds.StudyDescription == "photo of a film" and ds.ConversionType == "DI"
    assert ds.pixel_array.shape == (48, 64)
    assert node.queue.depth() >= 1  # analysed like any other study
    second = client.post(
        "/api/upload/image",
        params={"patient_id": "UP-1", "study_uid": item["study_uid"]},
        content=_png("RGB"),
        headers=_auth(RADIOLOGIST) | {"Content-Type": "image/png"},
    )
    assert second.status_code == 200 and second.json()["files"][0]["study_uid"] == item["study_uid"]


def test_a_dx_image_of_the_chest_is_analysed_by_the_xray_model(client, shipped_models) -> None:
    r = client.post(
        "/api/upload/image",
        params={"patient_id": "UP-2", "modality": "DX", "body_part": "chest"},
        content=_png(),
        headers=_auth(MODALITY) | {"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    [item] = r.json()["files"]
    node = client.node  # type: ignore[attr-defined]
    row = node.index.find_instance(item["sop_instance_uid"])
    assert row["sop_class_uid"] == DigitalXRayImageStorageForPresentation
    ds = dcmread(node.store.path_of(row["path"]))
    assert (ds.Modality, ds.BodyPartExamined, ds.PresentationIntentType) == (
        "DX",
        "CHEST",
        "FOR PRESENTATION",
    )
    run_all(node, AnalysisPipeline(node, shipped_models))
    result = study_result(node, item["study_uid"])
    assert result["status"] == "done", result
    assert "chest-xray-opacity" in str(result["model_version"])
    colour = client.post(
        "/api/upload/image",
        params={"patient_id": "UP-2", "modality": "DX"},
        content=_png("RGB"),
        headers=_auth(MODALITY) | {"Content-Type": "image/png"},
    )
    assert colour.status_code == 422 and "grey-scale" in colour.text


@pytest.mark.parametrize("patient_id", ["", "   "])
def test_image_without_patient_id_is_refused(client, patient_id: str) -> None:
    params = {"modality": "OT"} | ({"patient_id": patient_id} if patient_id else {})
    r = client.post(
        "/api/upload/image",
        params=params,
        content=_png(),
        headers=_auth(MODALITY) | {"Content-Type": "image/png"},
    )
    assert r.status_code == 422 and "patient ID is required" in r.text
    assert client.node.index.counts()["instances"] == 0  # type: ignore[attr-defined]


def test_image_that_is_not_one_and_bad_modality_are_refused(client) -> None:
    headers = _auth(MODALITY) | {"Content-Type": "image/jpeg"}
    r = client.post(
        "/api/upload/image", params={"patient_id": "X"}, content=b"nope", headers=headers
    )
    assert r.status_code == 422
    r = client.post(
        "/api/upload/image",
        params={"patient_id": "X", "modality": "CT"},
        content=_png(),
        headers=headers,
    )
    assert r.status_code == 400  # a query parameter out of its range, as everywhere


def test_viewer_role_may_not_upload(client, tmp_path) -> None:
    viewer = _auth(VIEWER)
    assert (
        client.post("/api/upload/known", json={"sop_instance_uids": []}, headers=viewer).status_code
        == 403
    )
    assert (
        client.post(
            "/api/upload/zip",
            content=_zip({"a.txt": b"x"}),
            headers=viewer | {"Content-Type": "application/zip"},
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/api/upload/image",
            params={"patient_id": "P"},
            content=_png(),
            headers=viewer | {"Content-Type": "image/png"},
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/dicom-web/studies",
            content=b"--b\r\n\r\n--b--",
            headers=viewer
            | {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        ).status_code
        == 403
    )
    assert client.post("/api/upload/known", json={"sop_instance_uids": []}).status_code == 401
    assert client.get("/ui/upload/").status_code == 200  # the page itself holds no data
