"""Pipeline step 1, export: the judged studies, de-identified, with their final label and
their patient-level split.

The labels come from the node's API (``GET /api/retraining/labels``), the images by
WADO-RS (PS3.18 10.4) from the node's own DICOMweb service or a PACS's, with a bearer
token: the step talks HTTP only, so it runs the same in a local subprocess and in a
Kubeflow pod. Only CT image instances are exported (no SRs: they name observers).
Each instance goes through :class:`ai_node.retrain.deid.Deidentifier`; what is written
is a folder per study (named by its replaced Study Instance UID) and ``manifest.json``
with the pseudonymous patient key, the split and the label of each study: no original
identifier, UID or date leaves the node.

The split (:mod:`.split`) is drawn once every study is in, stratified by label. A run
stops here, before anything is trained, when the test split would hold fewer studies of
either class than the minimum (:class:`ai_node.retrain.split.SplitError` says how many
more labels it needs); when the labels alone show it cannot, before anything is fetched.

Secrets come from the environment, never from pipeline parameters (which KFP shows):
``RADNODE_RETRAINING_API_TOKEN`` (bearer token, role admin) and
``RADNODE_RETRAINING_SALT`` (the de-identification and split salt).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from ai_node.labels import TARGETS
from ai_node.preprocess import CT_SOP_CLASSES
from ai_node.retrain.deid import Deidentifier, DeidError, patient_key, remap_uid
from ai_node.retrain.split import (
    SplitMinimum,
    assign_splits,
    check_label_counts,
    check_test_split,
    patient_classes,
)

logger = logging.getLogger(__name__)

TOKEN_ENV = "RADNODE_RETRAINING_API_TOKEN"
SALT_ENV = "RADNODE_RETRAINING_SALT"
MANIFEST = "manifest.json"


class ExportError(RuntimeError):
    """Too few labels, an unreachable node, or a salt missing."""


@dataclass(frozen=True)
class LabelledStudy:
    study_uid: str
    label: str
    feedback_id: int

    @property
    def target(self) -> int:
        return TARGETS[self.label]


Fetch = Callable[[str], Sequence[Dataset]]


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_labels(api_url: str, token: str | None, timeout_s: float = 60.0) -> list[LabelledStudy]:
    """The final label of each judged study, from the node's API."""
    url = f"{api_url.rstrip('/')}/api/retraining/labels"
    try:
        response = httpx.get(url, headers=_headers(token), timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ExportError(f"cannot read the labels from {url}: {exc}") from exc
    items = response.json().get("items", [])
    return [
        LabelledStudy(str(i["study_uid"]), str(i["label"]), int(i["feedback_id"]))
        for i in items
        if str(i.get("label")) in TARGETS
    ]


def split_minimum(min_negatives: int, min_positives: int) -> SplitMinimum:
    """The test split's minimum, its classes named by their labels."""
    names = {value: name for name, value in TARGETS.items()}
    return SplitMinimum(min_negatives, min_positives, (names[0], names[1]))


def dicomweb_fetcher(dicomweb_url: str, token: str | None) -> Fetch:
    """WADO-RS retrieve of a whole study (PS3.18 10.4.1.1.1), as pydicom datasets."""

    client = DICOMwebClient(url=dicomweb_url.rstrip("/"), headers=_headers(token))

    def fetch(study_uid: str) -> Sequence[Dataset]:
        return list(client.retrieve_study(study_uid))

    return fetch


def export_studies(
    out_dir: Path,
    labels: Sequence[LabelledStudy],
    fetch: Fetch,
    salt: str,
    val_fraction: float,
    test_fraction: float,
    minimum: SplitMinimum | None = None,
) -> dict[str, Any]:
    """Fetch, de-identify and write each labelled study, then split the patients; returns
    (and writes) the manifest. With ``minimum``, raises
    :class:`ai_node.retrain.split.SplitError` when the test split falls short of it."""
    deid = Deidentifier(salt)
    out_dir.mkdir(parents=True, exist_ok=True)
    studies: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, item in enumerate(labels):
        images = [ds for ds in fetch(item.study_uid) if str(ds.SOPClassUID) in CT_SOP_CLASSES]
        if not images:
            skipped.append(f"study {n}: no CT images")
            continue
        try:
            cleaned = [deid(ds) for ds in images]
        except DeidError as exc:
            skipped.append(f"study {n}: {exc}")
            continue
        key = patient_key(salt, str(images[0].PatientID))
        folder = remap_uid(salt, item.study_uid)
        study_dir = out_dir / folder
        study_dir.mkdir(exist_ok=True)
        for ds in cleaned:
            ds.save_as(study_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        studies.append(
            {"dir": folder, "patient": key, "label": item.target, "instances": len(cleaned)}
        )
    classes = patient_classes((s["patient"], s["label"]) for s in studies)
    splits = assign_splits(salt, classes, val_fraction, test_fraction)
    for study in studies:
        study["split"] = splits[study["patient"]]
    manifest = {
        "studies": studies,
        "skipped": skipped,
        "labels_upto": max((i.feedback_id for i in labels), default=0),
        "counts": {s: sum(1 for x in studies if x["split"] == s) for s in ("train", "val", "test")},
        "positives": {
            s: sum(1 for x in studies if x["split"] == s and x["label"] == 1)
            for s in ("train", "val", "test")
        },
        "test_fraction": test_fraction,
    }
    if minimum is not None:
        manifest["test_minimum"] = minimum.as_dict()
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("export done", extra={"studies": len(studies), "skipped": len(skipped)})
    if minimum is not None:
        check_test_split(studies, minimum, test_fraction)
    return manifest


def run_export(
    api_url: str,
    dicomweb_url: str,
    out_dir: str,
    val_fraction: float,
    test_fraction: float,
    min_labels: int,
    minimum: SplitMinimum,
) -> dict[str, Any]:
    """The export step as the pipeline runs it (secrets from the environment)."""
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        raise ExportError(f"{SALT_ENV} is not set: the export needs the node's salt")
    token = os.environ.get(TOKEN_ENV) or None
    labels = fetch_labels(api_url, token)
    if len(labels) < min_labels:
        raise ExportError(f"{len(labels)} labelled studies, fewer than the {min_labels} needed")
    check_label_counts([i.target for i in labels], minimum, test_fraction)
    fetch = dicomweb_fetcher(dicomweb_url or f"{api_url.rstrip('/')}/dicom-web", token)
    return export_studies(Path(out_dir), labels, fetch, salt, val_fraction, test_fraction, minimum)
