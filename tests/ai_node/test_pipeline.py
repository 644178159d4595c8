"""The worker's pipeline: job -> result row -> SR stored in the study; retries, dead workers,
bad input."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from sqlalchemy import update

from ai_node.pipeline import AnalysisPipeline
from ai_node.results import ResultStore
from ai_node.sr import PROBABILITY
from ai_node.synth import StudySpec, write_study
from ai_node.worker import Worker
from dicomweb.app import create_app
from radnode_core.index import jobs
from tests.support.analysis import add_study, ingest_files, run_all, sr_rows, study_result
from tests.support.tools import dciodvfy


def sr_probability(path: Path) -> float | None:
    sr = hd.sr.srread(path)
    [group] = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    values = group.get_measurements(name=PROBABILITY)
    return float(values[0].value) if values else None


def test_chest_study_gets_result_sr_and_api_answer(node, pipeline, tmp_path) -> None:
    study = add_study(
        node, StudySpec(region="chest", slices=48, nodules=2, seed=11), tmp_path / "in"
    )
    uid = study.study_instance_uid
    run_all(node, pipeline)

    [job] = node.queue.jobs_for(uid)
    assert job["state"] == "done"
    [sr_row] = sr_rows(node, uid)
    sr_path = node.store.path_of(sr_row["path"])
    report = dciodvfy(sr_path)
    assert not [line for line in report.splitlines() if line.startswith("Error")], report

    with TestClient(create_app(node)) as client:
        answer = client.get(f"/api/studies/{uid}/result").json()
    assert answer["status"] == "done"
    assert 0.0 <= answer["score"] <= 1.0
    assert answer["score"] == pytest.approx(sr_probability(sr_path), abs=1e-6)
    assert answer["sr_sop_instance_uid"] == sr_row["sop_instance_uid"]
    assert answer["label"] in ("lesion", "no lesion")
    assert answer["model_version"].startswith("finding:")
    assert set(answer["timings"]) >= {"decode_s", "inference_s", "sr_s", "total_s"}
    assert answer["details"]["driving_sop_instance_uid"] in study.sop_instance_uids
    # the SR joins the study but does not make it due for analysis again
    assert node.queue.enqueue_if_due(uid, "manual") is None
    ds = pydicom.dcmread(sr_path)
    assert ds.StudyInstanceUID == uid and ds.PatientID == study.patient_id
    # the positive finding is marked on its driving slice, in that image's pixels
    assert answer["label"] == "lesion"
    location = answer["details"]["location"]
    assert location["sop_instance_uid"] == answer["details"]["driving_sop_instance_uid"]
    assert 0 <= location["column"] <= 512 and 0 <= location["row"] <= 512
    [roi] = hd.sr.MeasurementReport.from_sequence(
        [hd.sr.srread(sr_path)]
    ).get_planar_roi_measurement_groups()
    assert roi.roi is not None and roi.roi.GraphicType == "POINT"
    assert roi.roi.value[0] == pytest.approx([location["column"], location["row"]], abs=0.01)
    source = roi.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == location["sop_instance_uid"]


def test_retried_job_makes_no_second_sr_or_row(node, pipeline, tmp_path) -> None:
    study = add_study(
        node,
        StudySpec(region="chest", slices=16, seed=12, rows=128, columns=128, pixel_spacing_mm=2.8),
        tmp_path / "in",
    )
    uid = study.study_instance_uid
    job = node.queue.claim("w1")
    assert job is not None
    first = pipeline.process(job)
    second = pipeline.process(job)  # the same job again, as after a crash before complete()
    assert first["sr"] == second["sr"]
    assert len(sr_rows(node, uid)) == 1
    row = ResultStore(node.index).get(uid, job.version)
    assert row is not None and row["details"]["sr_duplicate"] is True


def test_killed_worker_job_completes_once_on_another(node, pipeline, tmp_path) -> None:
    """Worker A claims the job and dies mid-job (after storing the SR, before completing):
    its lease expires, worker B picks the job up and finishes it; one SR, one result."""
    study = add_study(
        node,
        StudySpec(
            region="chest",
            slices=16,
            nodules=1,
            seed=13,
            rows=128,
            columns=128,
            pixel_spacing_mm=2.8,
        ),
        tmp_path / "in",
    )
    uid = study.study_instance_uid
    dead = node.queue.claim("worker-a")
    assert dead is not None
    pipeline.process(dead)  # worker A got this far, then was killed (no complete())
    b = Worker(node.queue, pipeline, node.metrics, poll_s=0.01, worker_id="worker-b")
    assert b.run_once() is False  # lease still held by A
    with node.index.transaction() as conn:  # A's lease runs out (the clock, not a sleep)
        conn.execute(
            update(jobs).where(jobs.c.id == dead.id).values(lease_expires_at=time.time() - 1)
        )
    assert b.run_once() is True
    [job] = node.queue.jobs_for(uid)
    assert job["state"] == "done" and job["attempts"] == 2 and job["lease_owner"] == "worker-b"
    assert len(sr_rows(node, uid)) == 1
    assert study_result(node, uid)["status"] == "done"
    assert not node.queue.complete(dead, "worker-a")  # A's late completion is refused


def test_head_study_is_out_of_scope_with_an_sr(node, pipeline, tmp_path) -> None:
    study = add_study(
        node,
        StudySpec(region="head", slices=24, seed=14, rows=128, columns=128, pixel_spacing_mm=2.8),
        tmp_path / "in",
    )
    run_all(node, pipeline)
    result = study_result(node, study.study_instance_uid)
    assert result["status"] == "out_of_scope" and result["score"] is None
    assert result["label"] == "out of scope: head"
    [sr_row] = sr_rows(node, study.study_instance_uid)
    assert sr_row["sop_instance_uid"] == result["sr_sop_instance_uid"]
    assert sr_probability(node.store.path_of(sr_row["path"])) is None


def _write_variant(spec: StudySpec, out: Path, change) -> list[Path]:
    _, files = write_study(spec, out)
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f, enforce_file_format=True)
    return files


def test_bad_inputs_end_in_a_result_and_the_worker_keeps_going(node, pipeline, tmp_path) -> None:
    small: dict[str, Any] = {
        "rows": 128, "columns": 128, "pixel_spacing_mm": 2.8, "region": "chest"
    }
    studies = {}

    # 1. no CT series: a secondary capture only
    def to_sc(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.Modality = "OT"

    files = _write_variant(StudySpec(slices=2, seed=21, **small), tmp_path / "sc", to_sc)

    # 2. corrupt pixel data: RLE segments that do not decode
    def corrupt(ds):
        ds.compress(RLELossless)
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])

    # 3. one slice, 4. unsigned 16-bit, 5. compressed (RLE lossless)
    def unsigned(ds):
        arr = ds.pixel_array.astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()

    def compress(ds):
        ds.compress(RLELossless)

    cases = {
        "no_ct": (files, ExplicitVRLittleEndian),
        "corrupt": (
            _write_variant(StudySpec(slices=3, seed=22, **small), tmp_path / "bad", corrupt),
            RLELossless,
        ),
        "one_slice": (
            _write_variant(
                StudySpec(slices=1, seed=23, **small), tmp_path / "one", lambda ds: None
            ),
            ExplicitVRLittleEndian,
        ),
        "unsigned": (
            _write_variant(StudySpec(slices=8, seed=24, **small), tmp_path / "u16", unsigned),
            ExplicitVRLittleEndian,
        ),
        "compressed": (
            _write_variant(StudySpec(slices=8, seed=25, **small), tmp_path / "rle", compress),
            RLELossless,
        ),
    }
    for name, (paths, ts) in cases.items():
        ingest_files(node, paths, ts)
        uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
        node.queue.enqueue_if_due(uid, "manual")
        studies[name] = uid
    run_all(node, pipeline)
    got = {name: study_result(node, uid) for name, uid in studies.items()}
    assert got["no_ct"]["status"] == "out_of_scope"
    assert "no active model is for this study" in got["no_ct"]["reason"]
    assert got["corrupt"]["status"] == "failed" and "decoded" in got["corrupt"]["error"]
    for name in ("one_slice", "unsigned", "compressed"):
        assert got[name]["status"] == "done", (name, got[name])
        assert len(sr_rows(node, studies[name])) == 1
    for uid in studies.values():
        assert node.queue.jobs_for(uid)[0]["state"] == "done"  # answered, not stuck


def test_unexpected_errors_are_retried_then_parked_with_the_error(
    node, pipeline, tmp_path, monkeypatch
) -> None:
    study = add_study(
        node, StudySpec(region="chest", slices=4, seed=31, rows=64, columns=64), tmp_path / "in"
    )

    def broken(*_a, **_k):
        raise OSError("disk on fire")

    monkeypatch.setattr(node.ingestor, "ingest_built", broken)
    worker = run_all(node, pipeline)
    [job] = node.queue.jobs_for(study.study_instance_uid)
    assert job["state"] == "failed" and job["attempts"] == node.queue.max_attempts
    with TestClient(create_app(node)) as client:
        answer = client.get(f"/api/studies/{study.study_instance_uid}/result").json()
    assert answer["status"] == "failed" and "disk on fire" in answer["error"]
    assert (
        'radnode_jobs_finished_total{outcome="failed"} 1.0' in worker.metrics.exposition().decode()
    )


def test_the_assembled_worker_runs_the_analysis_pipeline(node) -> None:
    from radnode.assembly import make_worker

    assert isinstance(make_worker(node).processor, AnalysisPipeline)


def test_multi_frame_enhanced_ct_study(node, pipeline) -> None:
    from tests.support.analysis import enhanced_ct

    uid, raw = enhanced_ct(
        StudySpec(
            region="chest",
            slices=12,
            nodules=1,
            seed=51,
            rows=128,
            columns=128,
            pixel_spacing_mm=2.8,
        )
    )
    node.ingestor.ingest(raw, ExplicitVRLittleEndian, source="test")
    node.queue.enqueue_if_due(uid, "manual")
    run_all(node, pipeline)
    result = study_result(node, uid)
    assert result["status"] == "done" and result["details"]["slices"] == 12, result
    [sr_row] = sr_rows(node, uid)
    sr_path = node.store.path_of(sr_row["path"])
    report = dciodvfy(sr_path)
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    sr = hd.sr.srread(sr_path)
    [group] = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    frames = [
        item.ReferencedSOPSequence[0].get("ReferencedFrameNumber") for item in group.source_images
    ]
    assert frames and all(f is not None for f in frames)
    [roi] = hd.sr.MeasurementReport.from_sequence([sr]).get_planar_roi_measurement_groups()
    assert roi.roi is not None
    source = roi.roi.ContentSequence[0].ReferencedSOPSequence[0]
    image = group.source_images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert source.ReferencedSOPInstanceUID == image and source.ReferencedFrameNumber


def test_study_missing_optional_tags(node, pipeline, tmp_path) -> None:
    def strip(ds):
        for kw in (
            "PixelSpacing",
            "SliceThickness",
            "ImagePositionPatient",
            "RescaleSlope",
            "PatientBirthDate",
            "AccessionNumber",
            "StudyID",
            "BodyPartExamined",
        ):
            if kw in ds:
                delattr(ds, kw)

    spec = StudySpec(region="chest", slices=8, seed=52, rows=128, columns=128, pixel_spacing_mm=2.8)
    files = _write_variant(spec, tmp_path / "bare", strip)
    ingest_files(node, files)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    node.queue.enqueue_if_due(uid, "manual")
    run_all(node, pipeline)
    result = study_result(node, uid)
    assert result["status"] == "done", result
    [sr_row] = sr_rows(node, uid)
    report = dciodvfy(node.store.path_of(sr_row["path"]))
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
