"""QIDO-RS against Orthanc as the PACS: what it holds of a study, the SRs radnode sent it."""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset

from ai_node.sr import PROBABILITY
from pacs_link import client
from tests.support.orthanc_peer import OrthancPacs


def qido(orthanc: OrthancPacs, path: str) -> list[dict]:
    response = client.session(orthanc.peer()).get(
        f"{orthanc.url}{path}", headers={"Accept": "application/dicom+json"}, timeout=30
    )
    response.raise_for_status()
    return response.json() if response.content else []


def sr_series(orthanc: OrthancPacs, study_uid: str) -> list[dict]:
    return qido(orthanc, f"/studies/{study_uid}/series?Modality=SR")


def sr_instances(orthanc: OrthancPacs, study_uid: str) -> list[dict]:
    series = sr_series(orthanc, study_uid)
    found: list[dict] = []
    for s in series:
        found += qido(orthanc, f"/studies/{study_uid}/series/{s['0020000E']['Value'][0]}/instances")
    return found


def instance_count(orthanc: OrthancPacs, study_uid: str) -> int:
    return len(qido(orthanc, f"/studies/{study_uid}/instances"))


def sr_probability(sr: Dataset) -> tuple[float, str]:
    """The SR's probability measurement and its software versions (model versions are in
    the algorithm identification)."""
    [group] = hd.sr.MeasurementReport.from_sequence(
        [hd.sr.Comprehensive3DSR.from_dataset(sr)]
    ).get_image_measurement_groups()
    [measurement] = group.get_measurements(name=PROBABILITY)
    return float(measurement.value), str(sr.ContentSequence)
