"""Pipeline step 1, export: the judged studies, de-identified, with their final label and
their patient-level split.

The labels of the retrained model's results come from the node's API
(``GET /api/retraining/labels?model=NAME``, with the model's active version and card), the
images by WADO-RS (PS3.18 10.4) from the node's own DICOMweb service or a PACS's, with a
bearer token: the step talks HTTP only, so it runs the same in a local subprocess and in a
Kubeflow pod. Only instances of the SOP classes the model's card lists are exported (no
SRs: they name observers); the card goes into the manifest, so the preprocess step
decodes each study as the analysis pipeline does for that model.
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

from ai_node.labels import FINDING_LABELS
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


FINDING_VOCABULARY = (FINDING_LABELS[0], FINDING_LABELS[1])


@dataclass(frozen=True)
class LabelledStudy:
    study_uid: str
    label: str
    feedback_id: int
    vocabulary: tuple[str, str] = FINDING_VOCABULARY
    """The model's (negative, positive) labels: the targets 0 and 1."""

    @property
    def target(self) -> int:
        return self.vocabulary.index(self.label)


@dataclass(frozen=True)
class ModelLabels:
    """What the API says of one model's labels: its active version and card, and the
    final label of each study a radiologist judged its result of."""

    model: str
    version: str
    card: dict[str, Any]
    vocabulary: tuple[str, str]
    studies: list[LabelledStudy]


Fetch = Callable[[str], Sequence[Dataset]]


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_labels(
    api_url: str, token: str | None, model: str = "finding", timeout_s: float = 60.0
) -> ModelLabels:
    """The final label of each study judged for ``model``, from the node's API."""
    url = f"{api_url.rstrip('/')}/api/retraining/labels"
    try:
        response = httpx.get(
            url, params={"model": model}, headers=_headers(token), timeout=timeout_s
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ExportError(f"cannot read the labels of {model} from {url}: {exc}") from exc
    body = response.json()
    vocabulary = tuple(str(v) for v in body.get("labels") or FINDING_VOCABULARY)
    if len(vocabulary) != 2:
        raise ExportError(f"model {model}: labels {vocabulary} are not (negative, positive)")
    vocab = (vocabulary[0], vocabulary[1])
    studies = [
        LabelledStudy(str(i["study_uid"]), str(i["label"]), int(i["feedback_id"]), vocab)
        for i in body.get("items", [])
        if str(i.get("label")) in vocab
    ]
    return ModelLabels(
        str(body.get("model") or model), str(body.get("version") or ""), body.get("card") or {},
        vocab, studies,
    )


def split_minimum(
    min_negatives: int, min_positives: int, vocabulary: Sequence[str] = FINDING_VOCABULARY
) -> SplitMinimum:
    """The test split's minimum, its classes named by the model's labels."""
    return SplitMinimum(min_negatives, min_positives, (str(vocabulary[0]), str(vocabulary[1])))


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
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fetch, de-identify and write each labelled study, then split the patients; returns
    (and writes) the manifest. ``model``: the retrained model (``name``, ``version``,
    ``card``), whose card's SOP classes are exported (default: CT images, the finding
    model's). With ``minimum``, raises :class:`ai_node.retrain.split.SplitError` when the
    test split falls short of it."""
    deid = Deidentifier(salt)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = (model or {}).get("card") or {}
    sop_classes = _sop_classes(card) or CT_SOP_CLASSES
    studies: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, item in enumerate(labels):
        images = [ds for ds in fetch(item.study_uid) if str(ds.SOPClassUID) in sop_classes]
        if not images:
            skipped.append(f"study {n}: no image of the model's SOP classes")
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
    if model is not None:
        manifest["model"] = model
    if minimum is not None:
        manifest["test_minimum"] = minimum.as_dict()
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("export done", extra={"studies": len(studies), "skipped": len(skipped)})
    if minimum is not None:
        check_test_split(studies, minimum, test_fraction)
    return manifest


def _sop_classes(card: dict[str, Any]) -> frozenset[str]:
    """The SOP Class UIDs of a card (as data: the card's validation resolved keywords)."""
    applicability = card.get("applicability") or {}
    return frozenset(str(uid) for uid in applicability.get("sop_classes") or [])


def run_export(
    api_url: str,
    dicomweb_url: str,
    out_dir: str,
    val_fraction: float,
    test_fraction: float,
    min_labels: int,
    min_test_negatives: int,
    min_test_positives: int,
    model: str = "finding",
) -> dict[str, Any]:
    """The export step as the pipeline runs it (secrets from the environment)."""
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        raise ExportError(f"{SALT_ENV} is not set: the export needs the node's salt")
    token = os.environ.get(TOKEN_ENV) or None
    found = fetch_labels(api_url, token, model)
    labels = found.studies
    if len(labels) < min_labels:
        raise ExportError(
            f"{len(labels)} studies labelled for {model}, fewer than the {min_labels} needed"
        )
    minimum = split_minimum(min_test_negatives, min_test_positives, found.vocabulary)
    check_label_counts([i.target for i in labels], minimum, test_fraction)
    fetch = dicomweb_fetcher(dicomweb_url or f"{api_url.rstrip('/')}/dicom-web", token)
    described = {"name": found.model, "version": found.version, "card": found.card}
    return export_studies(
        Path(out_dir), labels, fetch, salt, val_fraction, test_fraction, minimum, described
    )
