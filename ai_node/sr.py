"""A model's result as a DICOM Comprehensive 3D SR: a TID 1500 Measurement Report.

Every model that reports (a card with a positive label) gets its own SR per study
version, coded from its card (:mod:`ai_node.card`): its finding concept and finding
site, its TID 4019 algorithm name and version, its procedure. The wording below is the
shipped finding model's (finding "Lesion", site "Lung", the region model's verdict as the
target region); any other model fills the same slots from its card.

Built with highdicom's template classes only (no hand-built content sequences):

* root: TID 1500 Measurement Report, title "Imaging Measurement Report", the
  procedure reported, the observation context (TID 1001) with a device observer
  (TID 1004: the node's name, radnode as manufacturer, the model name and version),
  and the image library (TID 1600) of the evaluated series (the slices it references,
  and the series' first and last slice; images without the geometry its entry
  descriptors need, such as multi-frame objects, are left out of it);
* one TID 1501 measurement group with a tracking identifier (TID 4108), the
  finding type "Lesion", the finding site (lung), a coded qualitative evaluation
  "Lesion: Present / Absent" (or "Not Evaluated" when out of scope), the target
  region found by the region model (when a body part verdict decided), the study score
  as a numeric "Probability" in UCUM unit "1", the algorithm identification (TID 4019:
  name, version, parameters), and the evidence slices (images) as source images;
* beside it, one TID 1410 planar ROI group: for a located positive finding
  (:mod:`ai_node.localise`) a SCOORD POINT on the driving image with that image as its
  source, the finding type, the finding site, "Lesion: Present" and the probability; for
  any other result (negative, out of scope, a model without a localisation method) a
  closed POLYLINE around the whole of the image the result names (the driving slice, or
  the middle slice when out of scope): the image evaluated.

The TID 1410 group and the TID 1501 group share one Tracking Unique Identifier (TID 4108:
the same finding, seen in two groups). A viewer that draws measurement groups (OHIF's SR
extension) merges groups by that identifier and draws the merged group's SCOORD; a group
with no SCOORD of its own or of a group it merges with leaves it without coordinates
(OHIF 3.13 then fails to open the SR), which is why every SR carries one.

The report is COMPLETE and UNVERIFIED (PS3.3 C.17.2: no human has verified it) and
PRELIMINARY. It joins the source study (patient and study modules copied from the
evidence) in a new series. Its Series and SOP Instance UIDs are derived from (study,
study version, the versions of the models that made the result), so a retried job
writes the same instance again and the store's duplicate policy answers success without
a second copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName

from ai_node.analysis import StudyAnalysis
from ai_node.card import ModelCard
from ai_node.labels import REGION_CODES
from ai_node.localise import Location
from ai_node.preprocess import SliceRef, SliceStack

SR_SERIES_NUMBER = 9901
"""Series Number of the node's AI result series (high, so viewers list it last)."""

PROBABILITY = codes.DCM.Probability
"""The concept name of the study score's numeric measurement."""

# Type 2 attributes highdicom copies from the evidence into the SR (PS3.3 C.7.1.1, C.7.2.1);
# a source image that lacks one gets it empty in our copy, never in the stored file.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


MAX_MOVING_AVERAGE_TEXT = (
    "score=max over slices of the {w}-slice moving average of slice probabilities"
)


@dataclass(frozen=True)
class ReportContext:
    """Who produced the report: the node (device observer), the reporting model
    (``finding_*``: its algorithm name and version) and the model whose body part verdict
    decided whether it applied (``region_*``; None when no verdict was asked), and how the
    reporting model's card codes its result."""

    node_name: str
    device_uid: str
    software_version: str
    finding_model: str
    finding_version: str
    region_model: str | None
    region_version: str | None
    threshold: float
    institution_name: str | None = None
    finding: Code = codes.SCT.Lesion
    finding_site: Code | None = codes.SCT.Lung
    procedure: Code = codes.LN.CTUnspecifiedBodyRegion
    aggregation: str = MAX_MOVING_AVERAGE_TEXT.format(w=3)
    region_codes: Mapping[str, Code] = field(default_factory=lambda: dict(REGION_CODES))


def aggregation_text(card: ModelCard) -> str:
    """The score's definition, as the SR's algorithm parameters state it."""
    agg = card.aggregation
    if agg is None:
        return "score=max over images of the image probabilities"
    sampled = f" (evenly spaced sample of {agg.sample})" if agg.sample else ""
    if agg.method == "max_moving_average":
        return MAX_MOVING_AVERAGE_TEXT.format(w=agg.window) + sampled
    if agg.method == "mean":
        return f"score=mean over slices{sampled} of slice probabilities"
    return f"score=mean of the top {agg.k} slice probabilities{sampled}"


def context_for(
    card: ModelCard,
    version: str,
    threshold: float,
    *,
    node_name: str,
    device_uid: str,
    software_version: str,
    region: ModelCard | None = None,
    region_version: str | None = None,
    institution_name: str | None = None,
) -> ReportContext:
    """The report context of ``card``'s model at its operating ``threshold`` (``region``:
    the card of the model whose verdict its body part rule used)."""
    codes_of_region: dict[str, Code] = {}
    if region is not None:
        for label in region.outputs.labels:
            code = region.label_code(label)
            if code is not None:
                codes_of_region[label] = code
    return ReportContext(
        node_name=node_name,
        device_uid=device_uid,
        software_version=software_version,
        finding_model=card.algorithm_name,
        finding_version=version,
        region_model=region.algorithm_name if region is not None else None,
        region_version=region_version,
        threshold=threshold,
        institution_name=institution_name,
        finding=card.finding_code(),
        finding_site=card.finding_site_code(),
        procedure=card.procedure_code(),
        aggregation=aggregation_text(card),
        region_codes=codes_of_region or dict(REGION_CODES),
    )


def model_version_key(analysis: StudyAnalysis) -> str:
    """The models that made a result, as one string (results.model_version, UID entropy)."""
    return ",".join(
        f"{task}:{version}" for task, version in sorted(analysis.model_versions.items())
    )


def sr_uids(study_uid: str, version: int, model_version: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID): a pure function of the study version and models."""
    key = ["radnode-ai-sr-v1", study_uid, str(version), model_version]
    return (
        generate_uid(entropy_srcs=[*key, "series"]),
        generate_uid(entropy_srcs=[*key, "instance"]),
    )


_LIBRARY_DESCRIPTORS = (
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
)
"""What highdicom's TID 1604 entry descriptors read from a cross-sectional image."""


def evidence_of_stack(
    stack: SliceStack, refs: Sequence[SliceRef], location: Location | None = None
) -> tuple[list[Dataset], list[Dataset]]:
    """(evidence, library) headers of the SR of a result on ``stack``: every evaluated
    image is evidence (the evidence sequence lists them all, PS3.3 C.17.2.3); the image
    library (TID 1600, optional in TID 1500) describes the image the TID 1410 group draws
    on, the located finding's or else the first of ``refs``. Each library entry costs
    about 200 data elements that highdicom copies and parses again, so the library is
    kept to that one image."""
    evaluated = dict.fromkeys(r.sop_instance_uid for r in stack.refs)
    drawn = location.ref if location is not None else (refs[0] if refs else None)
    evidence = [stack.headers[u] for u in evaluated if u in stack.headers]
    library = []
    if drawn is not None and drawn.sop_instance_uid in stack.headers:
        library.append(stack.headers[drawn.sop_instance_uid])
    return evidence, library


def _library_ready(ds: Dataset) -> bool:
    """Whether an image can be an image library entry (a multi-frame image keeps these in
    functional groups, and a single-frame one may lack them: such images stay evidence)."""
    return all(ds.get(keyword) not in (None, "") for keyword in _LIBRARY_DESCRIPTORS)


def _evidence_copy(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.tag.group >= 0x0008 and elem.keyword != "PixelData":
            out.add(elem)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    name = out.PatientName
    if isinstance(name, str | PersonName) and str(name) and "^" not in str(name):
        # A one-component name with its trailing caret (PS3.5 6.2.1.2: the same name),
        # as highdicom asks; it would otherwise warn with the name in the message.
        out.PatientName = f"{name}^"
    return out


class _OwnedContent(Dataset):
    """A report's root content item, handed to highdicom's SR constructor uncopied.

    The constructor deep-copies its content only so that turning the copy into its own
    item classes leaves the caller's tree as it was (about 12 ms for a study's report).
    Safe to skip: :func:`build_sr` makes the tree for this one SR and never uses it again,
    and the in-place conversion keeps every value (tests compare the two paths' bytes).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _OwnedContent:
        return self


def _region_source(ref: SliceRef) -> SourceImageForRegion:
    return SourceImageForRegion(
        referenced_sop_class_uid=ref.sop_class_uid,
        referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=[ref.frame_number] if ref.frame_number else None,
    )


def _located_group(
    location: Location,
    tracking: TrackingIdentifier,
    ctx: ReportContext,
    algorithm: AlgorithmIdentification,
    measurements: Sequence[Measurement],
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the finding's mark (a SCOORD POINT, PS3.3 C.18.6) on its driving image."""
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POINT,
            graphic_data=np.asarray([[location.column, location.row]], dtype=np.float64),
            source_image=_region_source(location.ref),
        ),
        finding_type=ctx.finding,
        algorithm_id=algorithm,
        finding_sites=[FindingSite(ctx.finding_site)] if ctx.finding_site else None,
        qualitative_evaluations=[QualitativeEvaluation(ctx.finding, codes.SCT.Present)],
        measurements=list(measurements) or None,
    )


def _evaluated_image_group(
    ref: SliceRef, images: Sequence[Dataset], tracking: TrackingIdentifier
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: a closed POLYLINE around the whole of the image the result names."""
    header = next((ds for ds in images if ds.SOPInstanceUID == ref.sop_instance_uid), None)
    if header is None or not header.get("Rows") or not header.get("Columns"):
        raise ValueError(f"evidence: no Rows and Columns for image {ref.sop_instance_uid}")
    rows, columns = float(header.Rows), float(header.Columns)
    outline = [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]]
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=np.asarray(outline, dtype=np.float64),
            source_image=_region_source(ref),
        ),
    )


def build_sr(
    evidence: Sequence[Dataset],
    analysis: StudyAnalysis,
    evidence_refs: Sequence[SliceRef],
    ctx: ReportContext,
    study_uid: str,
    version: int,
    library: Sequence[Dataset] | None = None,
) -> Comprehensive3DSR:
    """The SR for one analysed study version.

    ``evidence`` are the headers of the evaluated images: every one is listed in the
    Current Requested Procedure Evidence Sequence (PS3.3 C.17.2.3), the first gives the
    patient and study modules. ``library``: the images of the TID 1600 image library (by
    default every evidence image; the pipeline passes those the content references).
    ``evidence_refs`` are the slices that drove the score (source images of the
    measurement group).
    """
    if not evidence:
        raise ValueError("evidence: at least one source image is required")
    shown = [_evidence_copy(ds) for ds in (evidence if library is None else library)]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in shown}
    first = by_uid.get(str(evidence[0].SOPInstanceUID)) or _evidence_copy(evidence[0])
    images = [first, *evidence[1:]]  # highdicom reads the UIDs of all but the first
    model_version = model_version_key(analysis)
    series_uid, sop_uid = sr_uids(study_uid, version, model_version)

    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=ctx.device_uid,
            name=ctx.node_name[:64],
            manufacturer_name="radnode",
            model_name=f"{ctx.finding_model} {ctx.finding_version}"[:64],
        ),
    )
    parameters = [f"threshold={ctx.threshold}", ctx.aggregation]
    by_verdict = ctx.region_model is not None and analysis.region is not None
    if by_verdict:
        parameters += [
            f"region_model={ctx.region_model} {ctx.region_version}",
            f"region={analysis.region}",
        ]
    out_by_verdict = by_verdict and not analysis.in_scope
    algorithm = AlgorithmIdentification(
        name=str(ctx.region_model) if out_by_verdict else ctx.finding_model,
        version=str(ctx.region_version) if out_by_verdict else ctx.finding_version,
        parameters=parameters,
        manufacturer="radnode",
    )
    region_evals = []
    if by_verdict:
        region_code = ctx.region_codes.get(str(analysis.region), codes.SCT.BodyPartStructure)
        region_evals = [QualitativeEvaluation(codes.DCM.TargetRegion, region_code)]
    finding_name = ctx.finding.meaning.lower()
    tracking_uid = generate_uid(entropy_srcs=[sop_uid, "tracking"])
    tracking_text = (
        f"AI {finding_name} finding" if analysis.in_scope else "AI: not evaluated (out of scope)"
    )
    if analysis.in_scope and analysis.score is not None:
        present = analysis.score >= ctx.threshold
        qualitative = [
            QualitativeEvaluation(ctx.finding, codes.SCT.Present if present else codes.SCT.Absent),
            *region_evals,
        ]
        # The group's TID 4019 identifies the algorithm; the measurement does not repeat
        # it (optional in TID 300, and a seventh of the content highdicom copies).
        measurements = [
            Measurement(
                name=PROBABILITY,
                value=round(float(analysis.score), 6),
                unit=codes.UCUM.NoUnits,
            )
        ]
    else:
        qualitative = [QualitativeEvaluation(ctx.finding, codes.SCT.NotEvaluated), *region_evals]
        measurements = []
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=tracking_text),
        finding_type=ctx.finding,
        algorithm_id=algorithm,
        finding_sites=[FindingSite(ctx.finding_site)] if ctx.finding_site else None,
        qualitative_evaluations=qualitative,
        measurements=measurements or None,
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=ref.sop_class_uid,
                referenced_sop_instance_uid=ref.sop_instance_uid,
                referenced_frame_numbers=[ref.frame_number] if ref.frame_number else None,
            )
            for ref in evidence_refs
        ],
    )
    tracking = TrackingIdentifier(uid=tracking_uid, identifier=tracking_text)
    if analysis.location is not None:
        roi = _located_group(analysis.location, tracking, ctx, algorithm, measurements)
    else:
        roi = _evaluated_image_group(evidence_refs[0], [*shown, *images], tracking)
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=ctx.procedure,
        imaging_measurements=[roi, group],
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=[image for image in shown if _library_ready(image)] or None,
    )
    description = (
        f"AI {finding_name} score {analysis.score:.2f}"
        if analysis.in_scope and analysis.score is not None
        else f"AI not evaluated: out of scope ({analysis.region or analysis.reason or ''})"
    )
    return Comprehensive3DSR(
        evidence=images,
        content=_OwnedContent(report[0]),
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radnode",
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=ctx.institution_name,
        series_description=description[:64],
        software_versions=ctx.software_version,
    )
