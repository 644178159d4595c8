"""Helpers of the retention tests: small studies with an SR, delivered (or not) to a PACS
peer at a chosen time, labelled by a radiologist, taken (or not) by a retraining export."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from sqlalchemy import insert, update

from ai_node.tables import feedback, retrain_runs
from pacs_link.outbox import Outbox
from pacs_link.tables import outbox
from radnode_core.index import studies
from radnode_core.node import Node
from tests.support.dicom_bytes import encode

PEER = "pacs"


@dataclass
class StoredStudy:
    study_uid: str
    originals: list[str]
    sr_uid: str


def _instance(study_uid: str, series_uid: str, modality: str, number: int, side: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage if modality == "SR" else CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = "RET-1"
    ds.PatientName = "Retention^Test"
    ds.InstanceNumber = number
    if modality != "SR":
        ds.Rows = ds.Columns = side
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.full((side, side), number, np.uint16).tobytes()
    return ds


def store_study(node: Node, instances: int = 3, side: int = 64) -> StoredStudy:
    """A CT study of ``instances`` images (``side`` x ``side``, 16 bit) and one SR."""
    study_uid, ct_series, sr_series = generate_uid(), generate_uid(), generate_uid()
    originals = []
    for n in range(instances):
        ds = _instance(study_uid, ct_series, "CT", n + 1, side)
        node.ingestor.ingest(encode(ds), ExplicitVRLittleEndian, source="test")
        originals.append(str(ds.SOPInstanceUID))
    sr = _instance(study_uid, sr_series, "SR", 1, side)
    node.ingestor.ingest(encode(sr), ExplicitVRLittleEndian, source="test", analyze=False)
    return StoredStudy(study_uid, originals, str(sr.SOPInstanceUID))


def deliver(node: Node, study: StoredStudy, at: dt.datetime | None) -> None:
    """Queue the study's SR for the peer; delivered at ``at`` (None: still pending), the
    study received an hour before."""
    Outbox(node.index).enqueue(PEER, study.study_uid, [(study.sr_uid, "sr")])
    if at is None:
        return
    received = at.timestamp() - 3600  # the study arrived an hour before its delivery
    with node.index.transaction() as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.study_uid == study.study_uid)
            .values(state="delivered", delivered_at=at)
        )
        conn.execute(
            update(studies)
            .where(studies.c.study_uid == study.study_uid)
            .values(first_received_at=received, last_received_at=received)
        )


def label(node: Node, study: StoredStudy) -> int:
    """A radiologist's confirm of the study's result; returns the feedback id."""
    with node.index.transaction() as conn:
        row = conn.execute(
            insert(feedback)
            .values(
                study_uid=study.study_uid,
                result_version=1,
                ai_sr_sop_instance_uid=study.sr_uid,
                decision="confirm",
                label="lesion",
                model_name="finding",
                user="rad",
                observer_name="Doe^Jane",
                sr_sop_instance_uid=generate_uid(),
                predecessor_sop_instance_uid=study.sr_uid,
                created_at=dt.datetime.now(dt.UTC),
            )
            .returning(feedback.c.id)
        ).scalar_one()
    return int(row)


def exported(node: Node, labels_upto: int) -> None:
    """A retraining run whose export step took every label up to ``labels_upto``."""
    with node.index.transaction() as conn:
        conn.execute(
            insert(retrain_runs).values(
                run_id=generate_uid()[-32:],
                trigger="manual",
                status="succeeded",
                started_at=dt.datetime.now(dt.UTC),
                steps={"export": "succeeded"},
                labels_upto=labels_upto,
            )
        )


def days_ago(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
