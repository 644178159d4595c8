"""Helpers of the analysis tests: synthetic studies ingested into an in-process node and
run through the pipeline, the SR rows that come out, a fixed report context."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from ai_node.pipeline import encode
from ai_node.results import ResultStore
from ai_node.sr import ReportContext
from ai_node.synth import StudySpec, SyntheticStudy, generate_study, write_study
from ai_node.worker import Processor, Worker
from radnode_core.node import Node
from tests.support.dicom_bytes import dataset_bytes

REPORT_CONTEXT = ReportContext(
    node_name="RADNODE",
    device_uid="2.25.1234",
    software_version="radnode test",
    finding_model="radnode-finding",
    finding_version="1.0.0",
    region_model="radnode-region",
    region_version="1.0.0",
    threshold=0.5,
)
"""The report context of the SR tests (a fixed device and model versions)."""


def small_study_headers(out: Path) -> list[Dataset]:
    """The headers of a 6-slice 64x64 synthetic chest study with a nodule, written to ``out``."""
    _, files = write_study(
        StudySpec(region="chest", slices=6, nodules=1, seed=5, rows=64, columns=64), out
    )
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def ingest_files(
    node: Node, files: list[Path], transfer_syntax: str = ExplicitVRLittleEndian
) -> None:
    for f in files:
        node.ingestor.ingest(dataset_bytes(f), transfer_syntax, source="test")


def add_study(node: Node, spec: StudySpec, out: Path) -> SyntheticStudy:
    """Write a synthetic study, ingest it and queue its job."""
    study, files = write_study(spec, out)
    ingest_files(node, files)
    node.queue.enqueue_if_due(study.study_instance_uid, "manual")
    return study


def run_all(node: Node, processor: Processor) -> Worker:
    worker = Worker(node.queue, processor, node.metrics, poll_s=0.01, retry_delay_s=0.0)
    while worker.run_once():
        pass
    return worker


def study_result(node: Node, study_uid: str) -> dict[str, Any]:
    """The study's result; AssertionError if it has none yet."""
    result = ResultStore(node.index).study_result(study_uid)
    assert result is not None, f"no result for {study_uid}"
    return result


def meaning(value: object) -> str:
    """The meaning of a coded SR value read back (highdicom annotates a qualitative
    evaluation's value as a number; it is a coded concept)."""
    assert isinstance(value, hd.sr.CodedConcept), value
    return str(value.meaning)


def sr_rows(node: Node, study_uid: str) -> list[dict[str, Any]]:
    return [
        r
        for r in node.index.instances_of_study(study_uid)
        if r["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.34"
    ]


def enhanced_ct(spec: StudySpec) -> tuple[str, bytes]:
    """A multi-frame Enhanced CT instance (explicit VR LE dataset bytes) of a synthetic
    study: per-frame positions, shared rescale/orientation/spacing. Returns its study UID."""
    study, datasets = generate_study(spec)
    slices = list(datasets)
    mf = copy.deepcopy(slices[0])
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "PixelSpacing",
        "SliceThickness",
        "SliceLocation",
        "WindowCenter",
        "WindowWidth",
        "WindowCenterWidthExplanation",
    ):
        if kw in mf:
            delattr(mf, kw)
    mf.SOPClassUID = EnhancedCTImageStorage
    mf.SOPInstanceUID = generate_uid()
    mf.NumberOfFrames = len(slices)
    mf.InstanceNumber = 1
    shared, pvt, orientation, measures = Dataset(), Dataset(), Dataset(), Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = slices[0].PixelSpacing
    measures.SliceThickness = slices[0].SliceThickness
    shared.PixelValueTransformationSequence = Sequence([pvt])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    mf.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for ds in slices:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = ds.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    mf.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    mf.PixelData = b"".join(ds.PixelData for ds in slices)
    return study.study_instance_uid, encode(mf)
