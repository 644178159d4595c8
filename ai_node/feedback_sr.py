"""A radiologist's judgement of an AI SR, as a new SR that supersedes it (PS3.3 C.17.2).

* **Confirm**: the AI SR's content tree unchanged (TID 1500, same measurement group,
  same probability, same algorithm identification), now with Verification Flag
  VERIFIED and a Verifying Observer Sequence (the radiologist's name, organisation
  and the date-time);
* **Relabel**: the same, with the group's qualitative evaluation of its finding (the
  concept of its Finding item: "Lesion" for the shipped finding model, each model's
  ``sr.finding`` otherwise) replaced by the radiologist's value (Present / Absent): an
  amended report, verified the same way.

Both carry a Predecessor Documents Sequence naming the SR they supersede (the AI SR,
or the previous feedback SR of the same result) and are COMPLETE and FINAL. The
content tree is the AI SR's, read back with highdicom (``MeasurementReport``), and the
replaced evaluation is a highdicom ``QualitativeEvaluation``; patient and study modules
come from the evidence images, as for the AI SR (:mod:`ai_node.sr`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from highdicom.sr import Comprehensive3DSR, MeasurementReport, QualitativeEvaluation
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ai_node.labels import FINDING_LABELS, SR_CODES
from ai_node.sr import _evidence_copy

FEEDBACK_SERIES_NUMBER = 9902
"""Series Number of verified / amended SRs (after the AI result series, 9901)."""

_ROOT_CONTENT = (
    "ValueType",
    "ConceptNameCodeSequence",
    "ContinuityOfContent",
    "ContentTemplateSequence",
    "ContentSequence",
)
"""The root content item's attributes in an SR document (PS3.3 C.17.3): its content tree."""

_MEASUREMENT_GROUP = codes.DCM.MeasurementGroup
_FINDING = codes.DCM.Finding
_IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements


def _is(item: Dataset, code: Code) -> bool:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return False
    name = seq[0]
    return bool(
        name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator
    )


def feedback_uids(predecessor_uid: str, feedback_key: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of a feedback SR: the same feedback (key) on the
    same predecessor gives the same UIDs, so a retried store writes the instance once."""
    key = ["radnode-feedback-sr-v1", predecessor_uid, feedback_key]
    return (
        generate_uid(entropy_srcs=[predecessor_uid, "radnode-feedback-series"]),
        generate_uid(entropy_srcs=[*key, "instance"]),
    )


def _finding_of(items: Sequence[Dataset]) -> Code:
    """The concept of a TID 1501 group's Finding item (121071), else SNOMED CT Lesion."""
    for item in items:
        if item.get("ValueType") == "CODE" and _is(item, _FINDING):
            concept = item.ConceptCodeSequence[0]
            return Code(
                str(concept.CodeValue),
                str(concept.CodingSchemeDesignator),
                str(concept.CodeMeaning),
            )
    return codes.SCT.Lesion


def relabel_content(root: Dataset, label: str, present: bool | None = None) -> int:
    """Replace the qualitative evaluation of the finding of every measurement group of a
    TID 1500 root content item (in place): Present when ``present`` (by default when
    ``label`` is the shipped positive label), else Absent; returns how many were replaced."""
    if present is None:
        value = SR_CODES[label]
    else:
        value = codes.SCT.Present if present else codes.SCT.Absent
    replaced = 0
    for container in root.get("ContentSequence", []):
        if not _is(container, _IMAGING_MEASUREMENTS):
            continue
        for group in container.get("ContentSequence", []):
            if not _is(group, _MEASUREMENT_GROUP):
                continue
            items = group.get("ContentSequence", [])
            finding = _finding_of(items)
            for i, item in enumerate(items):
                if item.get("ValueType") == "CODE" and _is(item, finding):
                    [evaluation] = QualitativeEvaluation(finding, value)
                    items[i] = evaluation
                    replaced += 1
    return replaced


def build_feedback_sr(
    predecessor: Dataset,
    evidence: Sequence[Dataset],
    *,
    observer_name: str,
    organization: str,
    label: str | None,
    feedback_key: str,
    decision: str | None = None,
    present: bool | None = None,
) -> Comprehensive3DSR:
    """The verified successor of ``predecessor``; with ``label``, its finding evaluation
    says that label (an amended report when it differs from the predecessor's): Present
    when ``present`` (by default: when ``label`` is the shipped positive label).

    ``decision`` ("confirm" / "relabel") only words the series description; by default
    a label means relabel.

    ``predecessor`` is the SR being judged (read with its content); ``evidence`` the headers
    of the images it references (its Current Requested Procedure Evidence), so the new SR's
    evidence and image library stay those of the AI SR. ``observer_name`` is a DICOM person
    name (``Family^Given``).
    """
    if not evidence:
        raise ValueError("evidence: the predecessor's source images are required")
    if label is not None and present is None and label not in SR_CODES:
        raise ValueError(f"label must be one of {list(FINDING_LABELS)}")
    root = Dataset()
    for keyword in _ROOT_CONTENT:
        if keyword in predecessor:
            setattr(root, keyword, copy.deepcopy(predecessor[keyword].value))
    MeasurementReport.from_sequence([root], copy=True)  # raises unless a TID 1500 root
    if label is not None and relabel_content(root, label, present) == 0:
        raise ValueError("the predecessor has no qualitative evaluation of its finding to relabel")
    series_uid, sop_uid = feedback_uids(str(predecessor.SOPInstanceUID), feedback_key)
    decision = decision or ("confirm" if label is None else "relabel")
    description = "AI result confirmed" if decision == "confirm" else f"AI result amended: {label}"
    return Comprehensive3DSR(
        evidence=[_evidence_copy(ds) for ds in evidence],
        content=root,
        series_instance_uid=series_uid,
        series_number=FEEDBACK_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radnode",
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=observer_name,
        verifying_organization=organization[:64],
        previous_versions=[predecessor],
        series_description=description[:64],
        software_versions=predecessor.get("SoftwareVersions"),
        institution_name=predecessor.get("InstitutionName"),
    )
