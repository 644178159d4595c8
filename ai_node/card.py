"""The model card: ``model.yaml`` in a model package, what a model is for and how to run it.

A model package is a folder (or a .zip of one) holding the model file and its card::

    model.yaml          this card
    model.keras         the model: Keras 3 (.keras), legacy Keras 2 HDF5 (.h5),
                        or a TensorFlow SavedModel folder (card field ``model_file``)

The card is validated by :class:`ModelCard` (pydantic); its JSON Schema is exported
into docs/model-card.schema.json and the field reference in docs/models.md
(``python -m ai_node.card docs``; a test checks that both are current). Every error
names the field it is about (``outputs.positive_label: ...``).

What the card decides, and where:

* ``applicability``: which studies the model is for (modalities, SOP classes, a body
  part rule that may need another model's verdict, a series description, a slice
  count); :mod:`ai_node.routing`.
* ``input``: how stored pixels become the model's input (size, channels, dtype, HU
  window(s) / min-max / percentile scaling, per-image or ImageNet standardisation,
  MONOCHROME1 inversion); :mod:`ai_node.preprocess`.
* ``aggregation``: how slice probabilities become a study score; :mod:`ai_node.analysis`.
* ``outputs`` and ``sr``: the labels, the positive one and the operating threshold; the
  coded finding and finding site of the SR (TID 1500 / 1501, TID 4019 algorithm
  identification); :mod:`ai_node.sr`.
* ``sha256``: the model file's digest, checked when the package is imported and every
  time the model is loaded.

Codes are named as pydicom's code dictionary names them (``SCT.Lesion``,
``DCM.AbnormalOpacity``) and resolved when the card is validated. SOP classes may be
given as UIDs or as pydicom's UID keywords (``CTImageStorage``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

CARD_FILE = "model.yaml"
"""The card's file name inside a package."""

SCHEMA_VERSION = 1

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

CT_MODALITIES = frozenset({"CT"})

CT_SOP_CLASS_UIDS = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
)
XR_SOP_CLASS_UIDS = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)
"""The projection radiography SOP classes an ``image`` model may name (PS3.4 B.5)."""

DEFAULT_THRESHOLD = 0.5
"""A study score at or above it is positive, unless the card or the node says otherwise."""

DEFAULT_TARGET_SENSITIVITY = 0.9
"""The sensitivity a retrained model's threshold aims at when the card names none."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet channel means and standard deviations (RGB, on 0..1 inputs)."""


class CardError(ValueError):
    """A card or package that cannot be used; the message names the field or file."""


# --------------------------------------------------------------------------- coded values

_CODE_SCHEMES = ("SCT", "DCM", "LN")


def resolve_code(name: str) -> Code:
    """``"SCT.Lesion"`` -> pydicom's :class:`Code` for it (ValueError naming what is wrong)."""
    scheme, _, keyword = name.partition(".")
    if scheme not in _CODE_SCHEMES or not keyword:
        raise ValueError(
            f"{name!r} is not a code name: write SCHEME.Keyword with SCHEME one of "
            f"{', '.join(_CODE_SCHEMES)} (pydicom's code dictionary), e.g. SCT.Lesion"
        )
    try:
        code = getattr(getattr(codes, scheme), keyword)
    except AttributeError:
        raise ValueError(
            f"{name!r}: no {scheme} code named {keyword!r} in pydicom's codes"
        ) from None
    if not isinstance(code, Code):
        raise ValueError(f"{name!r} names a group of codes, not one code")
    return code


def _code_name(value: str) -> str:
    resolve_code(value)
    return value


def _finding_code_name(value: str) -> str:
    if not value.startswith(("SCT.", "DCM.")):
        raise ValueError(f"{value!r}: a finding or finding site is a SNOMED CT or DCM code")
    return _code_name(value)


CodeName = Annotated[str, AfterValidator(_code_name)]
FindingCodeName = Annotated[str, AfterValidator(_finding_code_name)]


def _sop_class(value: str) -> str:
    import pydicom.uid

    if re.fullmatch(r"[0-9.]{1,64}", value):
        return value
    uid = getattr(pydicom.uid, value, None)
    if not isinstance(uid, pydicom.uid.UID):
        raise ValueError(f"{value!r} is neither a UID nor one of pydicom's UID keywords")
    return str(uid)


SopClass = Annotated[str, AfterValidator(_sop_class)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SliceCount(_Section):
    """How many slices (images) of a series the model accepts."""

    min: int = Field(1, ge=1, description="Fewest slices (images); fewer: not applicable.")
    max: int = Field(2000, ge=1, description="Most slices (images); more: not applicable.")

    @model_validator(mode="after")
    def _ordered(self) -> SliceCount:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is less than min ({self.min})")
        return self


class BodyPartRule(_Section):
    """Which body part the model is for, and who says what the study shows."""

    any_of: list[str] = Field(
        min_length=1,
        description="Accepted body parts, case-insensitive: Body Part Examined values "
        "(CHEST) or labels of the deciding model (chest).",
    )
    source: Literal["tag", "model"] = Field(
        description="tag: the series' Body Part Examined (0018,0015); model: the verdict "
        "(top label) of the active version of the model named in `model`.",
    )
    model: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="With source model: the name of the model whose verdict decides "
        "(e.g. the shipped region model, `region`).",
    )

    @model_validator(mode="after")
    def _model_named(self) -> BodyPartRule:
        if self.source == "model" and not self.model:
            raise ValueError("source model needs `model`: the name of the deciding model")
        if self.source == "tag" and self.model:
            raise ValueError("`model` is only for source model")
        return self

    def accepts(self, value: str | None) -> bool:
        return value is not None and value.strip().lower() in {v.lower() for v in self.any_of}


class Applicability(_Section):
    """Which studies the model is for. A series must match every rule given."""

    modalities: list[str] = Field(
        min_length=1, description="Modality (0008,0060) values, e.g. [CT] or [CR, DX]."
    )
    sop_classes: list[SopClass] = Field(
        min_length=1,
        description="SOP Class UIDs or pydicom keywords (CTImageStorage, "
        "DigitalXRayImageStorageForPresentation).",
    )
    body_part: BodyPartRule | None = Field(None, description="Body part rule (optional).")
    series_description: Annotated[str, AfterValidator(_regex)] | None = Field(
        None,
        description="Regular expression searched (case-insensitive) in Series "
        "Description (0008,103E); a series without one does not match.",
    )
    slices: SliceCount = Field(
        default_factory=lambda: SliceCount.model_validate({}),
        description="Slice (image) count range of the series.",
    )


class Window(_Section):
    """A window on Hounsfield units (PS3.3 C.11.2.1.2)."""

    center: float
    width: float = Field(gt=0)


class Normalisation(_Section):
    """From stored pixels (HU for CT) to model input: scale to 0..1, then standardise."""

    scale: Literal["hu_window", "min_max", "percentile"] = Field(
        description="hu_window: clip HU to each window, 0..1 (CT only); min_max: per "
        "image, 0..1; percentile: clip to the `percentiles` of each image, 0..1.",
    )
    windows: list[Window] | None = Field(
        None,
        description="hu_window: one window (replicated to every channel) or one per channel.",
    )
    percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="percentile: the low and high percentiles (0..100)."
    )
    standardise: Literal["none", "per_image", "imagenet"] = Field(
        "none",
        description="After scaling: none; per_image: zero mean and unit variance per image; "
        "imagenet: (x - mean) / std with ImageNet's channel statistics (3 channels).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Normalisation:
        if self.scale == "hu_window" and not self.windows:
            raise ValueError("scale hu_window needs `windows` (one, or one per channel)")
        if self.scale != "hu_window" and self.windows:
            raise ValueError("`windows` is only for scale hu_window")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError("percentiles must be 0 <= low < high <= 100")
        return self


class Input(_Section):
    """The model's input: one 2D slice of a volume, or one projection image."""

    kind: Literal["slice", "image"] = Field(
        description="slice: each axial slice of a CT series; image: each radiograph "
        "(one image is one slice; no aggregation).",
    )
    size: tuple[int, int] = Field(
        description="Rows and columns (square: images are padded to a square, then "
        "area-averaged to this size)."
    )
    channels: Literal[1, 3] = Field(
        description="1, or 3 (a grayscale image replicated, or one HU window per channel)."
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="Input tensor dtype.")
    normalisation: Normalisation
    invert_monochrome1: bool = Field(
        True,
        description="Invert MONOCHROME1 images (white is low) so that every image the model "
        "sees is bright where dense.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Input:
        rows, cols = self.size
        if rows != cols:
            raise ValueError(f"size must be square, got {rows}x{cols}")
        if not 16 <= rows <= 1024:
            raise ValueError(f"size must be 16..1024, got {rows}")
        norm = self.normalisation
        if norm.windows and len(norm.windows) not in (1, self.channels):
            raise ValueError(
                f"normalisation.windows: {len(norm.windows)} windows for {self.channels} "
                "channel(s): give one, or one per channel"
            )
        if norm.standardise == "imagenet" and self.channels != 3:
            raise ValueError("normalisation.standardise imagenet needs channels: 3")
        return self


class Aggregation(_Section):
    """How the slice probabilities of a volume become the study's score."""

    method: Literal["max_moving_average", "mean", "top_k_mean"] = Field(
        description="max_moving_average: the maximum over slices of a `window`-slice "
        "moving average along z; mean: the mean over slices; top_k_mean: the mean of the "
        "`k` highest slices.",
    )
    window: int = Field(3, ge=1, le=99, description="max_moving_average: slices averaged.")
    k: int = Field(3, ge=1, description="top_k_mean: slices averaged.")
    sample: int | None = Field(
        None,
        ge=1,
        description="Score only this many evenly spaced slices (a model for slowly "
        "varying anatomy); default: every slice.",
    )


class Outputs(_Section):
    """The model's output: one probability per label (or one for the positive label)."""

    labels: list[str] = Field(
        min_length=1,
        description="Label names in the order of the model's output units (binary: "
        "[negative, positive]; a one-unit binary model outputs the positive one's "
        "probability).",
    )
    positive_label: str | None = Field(
        None,
        description="The label a reader acts on; its probability is the triage score. "
        "A multiclass model without one reports nothing itself: its verdict serves other "
        "models' body part rules.",
    )
    negative_label: str | None = Field(
        None,
        description="The label of a study below the threshold (binary: the other label; "
        "multiclass / multilabel: default 'no <positive_label>').",
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Operating threshold: a score at or above it is positive (default: the "
        "node's finding_threshold setting, 0.5; a retrained version's operating_point wins).",
    )


class OperatingPoint(_Section):
    """The operating threshold the retraining pipeline chose for this version."""

    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Chosen threshold (overrides outputs.threshold)."
    )
    target_sensitivity: float = Field(
        0.9, gt=0.0, le=1.0, description="The sensitivity the threshold is chosen to reach."
    )
    chosen_on: str | None = Field(None, description="On what data it was chosen.")


class SRCoding(_Section):
    """How the SR codes the finding (TID 1501 group, TID 4019 algorithm identification)."""

    finding: FindingCodeName | None = Field(
        None,
        description="The finding concept (finding type and qualitative evaluation "
        "Present / Absent), e.g. SCT.Lesion, SCT.Nodule, DCM.AbnormalOpacity.",
    )
    finding_site: FindingCodeName | None = Field(
        None, description="The finding site, e.g. SCT.Lung."
    )
    algorithm_name: str | None = Field(
        None,
        max_length=64,
        description="Algorithm Name of the TID 4019 identification (default: `name`).",
    )
    procedure: CodeName | None = Field(
        None,
        description="Procedure reported (default: LN.CTUnspecifiedBodyRegion for CT, "
        "LN.XRUnspecifiedBodyRegion for radiographs).",
    )
    label_codes: dict[str, CodeName] = Field(
        default_factory=dict,
        description="How this model's labels are coded when another model's body part "
        "rule reports them (Target Region), e.g. {chest: SCT.Chest}.",
    )


class Localisation(_Section):
    """Which images the SR names as the evidence of its finding, and where on the driving
    image a positive finding is marked (:mod:`ai_node.localise`)."""

    method: Literal["evidence_slices", "max_activation", "grad_cam", "none"] = Field(
        "evidence_slices",
        description="evidence_slices: the slices (images) that drove the score (those at "
        "or above the threshold, at most `max_slices`, else the top one), no mark; "
        "max_activation: the same evidence, and a positive finding is marked on the "
        "driving image where the map of `layer` (typically the layer a global max pool "
        "reads) most raises the positive output (the activation times its gradient, summed "
        "over channels; a one-channel map: its maximum); grad_cam: the same with Grad-CAM "
        "on `layer`; none: only the middle slice of the evaluated series, no mark.",
    )
    layer: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="max_activation / grad_cam: the name of the Keras layer whose "
        "spatial map (rows, columns, channels) locates the finding.",
    )
    max_slices: int = Field(5, ge=1, le=50, description="Most evidence slices (images).")

    @model_validator(mode="after")
    def _layer_named(self) -> Localisation:
        if self.method in ("max_activation", "grad_cam") and not self.layer:
            raise ValueError(f"method {self.method} needs `layer`: the map's layer name")
        if self.method in ("evidence_slices", "none") and self.layer:
            raise ValueError("`layer` is only for max_activation and grad_cam")
        return self

    @property
    def marks(self) -> bool:
        """Whether a positive finding gets a location on its driving image."""
        return self.method in ("max_activation", "grad_cam")


InputStatistic = Literal["mean_hu", "slice_thickness_mm", "pixel_spacing_mm"]
"""The input statistics the pipeline records per study and drift compares with the card."""

INPUT_STATISTICS_NAMES: tuple[str, ...] = get_args(InputStatistic)


class InputDistribution(_Section):
    """An input statistic's distribution on the training (or held-out) data: a histogram
    whose bins are ``edges`` (values below the first or above the last count in the outer
    bins) and the share of studies in each."""

    edges: list[float] = Field(
        min_length=2, description="Bin edges, ascending (n + 1 edges for n bins)."
    )
    fractions: list[float] = Field(
        min_length=1, description="Share of the training studies in each bin (sums to 1)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> InputDistribution:
        if len(self.fractions) != len(self.edges) - 1:
            raise ValueError("fractions: one per bin (len(edges) - 1)")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges: must be strictly ascending")
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 0.01:
            raise ValueError("fractions: non-negative shares summing to 1")
        return self


class Monitoring(_Section):
    """What the model's behaviour in service is expected to be; drift alerts compare the
    newest studies with it (docs/operations.md "Drift")."""

    window: int = Field(
        100, ge=10, le=10000, description="How many of the newest studies drift looks at."
    )
    positive_rate: tuple[float, float] | None = Field(
        None,
        description="[low, high]: the band the share of positive studies over the window "
        "is expected in; outside it, a positive-rate alert.",
    )
    min_agreement: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Share of radiologists' judgements that confirm the model (over its "
        "newest `window` judgements) below which an agreement alert is raised.",
    )
    min_feedback: int = Field(
        20, ge=1, description="Fewest judgements before agreement is alerted on."
    )
    psi_alert: float = Field(
        0.25,
        gt=0,
        description="Population stability index of an input statistic (window against "
        "`inputs`) above which an input-drift alert is raised (0.1: a shift; 0.25: a large "
        "one).",
    )
    inputs: dict[InputStatistic, InputDistribution] = Field(
        default_factory=dict,
        description="The training distribution of each input statistic: mean_hu (mean "
        "HU inside the body, CT), slice_thickness_mm, pixel_spacing_mm.",
    )
    basis: str | None = Field(
        None, description="On what data the band and the distributions were measured."
    )

    @model_validator(mode="after")
    def _band(self) -> Monitoring:
        if self.positive_rate is not None:
            low, high = self.positive_rate
            if not 0.0 <= low < high <= 1.0:
                raise ValueError("positive_rate: [low, high] with 0 <= low < high <= 1")
        return self


class ModelCard(BaseModel):
    """The card of one model version (``model.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(1, description="Card format version.")
    name: str = Field(
        pattern=NAME_PATTERN,
        description="Registry name: lower case letters, digits, '.', '_', '-' (<= 64).",
    )
    version: str = Field(
        pattern=VERSION_PATTERN,
        description="Version; immutable once imported (letters, digits, '.', '_', '-').",
    )
    intended_use: str = Field(min_length=1, description="Intended use, in words.")
    description: str | None = Field(None, description="What the model does, in words.")
    limitations: str | None = Field(None, description="Known limitations, in words.")
    task: Literal["binary", "multiclass", "multilabel"] = Field(
        description="binary: one sigmoid unit (the positive label) or two softmax units; "
        "multiclass: one softmax unit per label; multilabel: one sigmoid unit per label.",
    )
    applicability: Applicability
    input: Input
    aggregation: Aggregation | None = Field(
        None, description="Volumes (input kind slice): required. Images: not allowed."
    )
    outputs: Outputs
    operating_point: OperatingPoint | None = Field(
        None, description="Set by the retraining pipeline (operating threshold, target)."
    )
    sr: SRCoding = Field(default_factory=lambda: SRCoding.model_validate({}))
    localisation: Localisation = Field(default_factory=lambda: Localisation.model_validate({}))
    metrics: dict[str, Any] | None = Field(
        None, description="Reported metrics and on what data (free form)."
    )
    training_data: str = Field(min_length=1, description="Training data provenance.")
    training: dict[str, Any] | None = Field(None, description="How it was trained (free form).")
    architecture: str | None = Field(None, description="The network, in words.")
    date: str | None = Field(None, description="When this version was made (YYYY-MM-DD).")
    framework: dict[str, str] | None = Field(
        None, description="Versions it was made with (tensorflow, keras, python)."
    )
    trainable: bool = Field(
        False,
        description="Whether `radnode retrain --model NAME` may make new versions of this "
        "model from the labels radiologists gave its results (binary, Keras, safe mode).",
    )
    timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Most seconds one study's inference may take."
    )
    model_file: str = Field(
        "model.keras",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="The model in the package: a .keras file, a .h5 file, or a "
        "TensorFlow SavedModel folder.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the model file (of a SavedModel folder: of its manifest, "
        "see docs/models.md); checked at import and at every load.",
    )
    promotion: dict[str, Any] | None = Field(
        None, description="Set by the retraining pipeline: its promotion decision."
    )
    monitoring: Monitoring | None = Field(
        None,
        description="Expected behaviour in service (positive-rate band, agreement, input "
        "distributions) that drift alerts compare with.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        out = self.outputs
        labels = out.labels
        if len(set(labels)) != len(labels):
            raise ValueError("outputs.labels: labels must be distinct")
        if self.task == "binary" and len(labels) != 2:
            raise ValueError("outputs.labels: a binary model has exactly 2 labels")
        if self.task == "multiclass" and len(labels) < 2:
            raise ValueError("outputs.labels: a multiclass model has at least 2 labels")
        if out.positive_label is None and self.task != "multiclass":
            raise ValueError(f"outputs.positive_label: required for a {self.task} model")
        if out.positive_label is not None and out.positive_label not in labels:
            raise ValueError(
                f"outputs.positive_label: {out.positive_label!r} is not one of outputs.labels"
            )
        if out.negative_label is not None and out.negative_label == out.positive_label:
            raise ValueError("outputs.negative_label: must differ from the positive label")
        if self.task == "binary" and out.negative_label not in (None, *labels):
            raise ValueError("outputs.negative_label: a binary model's is its other label")
        if out.positive_label is not None and self.sr.finding is None:
            raise ValueError("sr.finding: required for a model with a positive label")
        kind = self.input.kind
        if kind == "slice" and self.aggregation is None:
            raise ValueError("aggregation: required for input kind slice")
        if kind == "image" and self.aggregation is not None:
            raise ValueError("aggregation: input kind image is not aggregated (remove it)")
        if self.input.normalisation.scale == "hu_window":
            others = sorted(set(self.applicability.modalities) - CT_MODALITIES)
            if others:
                raise ValueError(
                    f"input.normalisation.scale: hu_window needs Hounsfield units; "
                    f"modalities {', '.join(others)} have none"
                )
        rule = self.applicability.body_part
        if rule is not None and rule.model == self.name:
            raise ValueError("applicability.body_part.model: a model cannot decide for itself")
        return self

    # -- derived --------------------------------------------------------------------

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def reports(self) -> bool:
        """Whether the model has a result of its own (a positive label to report)."""
        return self.outputs.positive_label is not None

    @property
    def negative_label(self) -> str:
        out = self.outputs
        if out.negative_label is not None:
            return out.negative_label
        if self.task == "binary":
            return next(label for label in out.labels if label != out.positive_label)
        return f"no {out.positive_label}"

    @property
    def label_vocabulary(self) -> tuple[str, str]:
        """(negative, positive): what the worklist shows and a radiologist may relabel to."""
        return self.negative_label, str(self.outputs.positive_label)

    @property
    def operating_threshold(self) -> float | None:
        """The card's threshold: the retraining's operating point, else ``outputs.threshold``;
        None leaves it to the node's ``finding_threshold``."""
        if self.operating_point is not None and self.operating_point.threshold is not None:
            return self.operating_point.threshold
        return self.outputs.threshold

    @property
    def target_sensitivity(self) -> float:
        point = self.operating_point
        return point.target_sensitivity if point is not None else DEFAULT_TARGET_SENSITIVITY

    def label_for(self, score: float, threshold: float) -> str:
        return str(self.outputs.positive_label) if score >= threshold else self.negative_label

    def output_widths(self) -> tuple[int, ...]:
        """The output widths (units) this card allows."""
        if self.task == "binary":
            return (1, 2)
        return (len(self.outputs.labels),)

    @property
    def algorithm_name(self) -> str:
        return self.sr.algorithm_name or self.name

    def finding_code(self) -> Code:
        return resolve_code(self.sr.finding or "SCT.Finding")

    def finding_site_code(self) -> Code | None:
        return resolve_code(self.sr.finding_site) if self.sr.finding_site else None

    def procedure_code(self) -> Code:
        if self.sr.procedure:
            return resolve_code(self.sr.procedure)
        if self.input.kind == "image":
            return codes.LN.XRUnspecifiedBodyRegion
        return codes.LN.CTUnspecifiedBodyRegion

    def label_code(self, label: str) -> Code | None:
        name = self.sr.label_codes.get(label)
        return resolve_code(name) if name else None

    def as_dict(self) -> dict[str, Any]:
        """The card as JSON-compatible data (what model.yaml holds, defaults filled in)."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------- reading


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(card)"


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, each naming its field."""
    lines = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{_where(err['loc'])}: {msg}")
    return "; ".join(lines)


def parse_card(data: Any, source: str = CARD_FILE) -> ModelCard:
    """Validate card data (a mapping); :class:`CardError` naming each bad field."""
    if not isinstance(data, dict):
        raise CardError(
            f"{source}: the card must be a mapping of fields, got {type(data).__name__}"
        )
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"{source}: {describe_errors(exc)}") from None


def read_card(path: Path) -> ModelCard:
    """Read and validate a ``model.yaml``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"no card: {path.name} is missing from the package") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path.name}: unreadable: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"{path.name}: not YAML: {exc}") from None
    return parse_card(data, path.name)


def dump_card(card: ModelCard | dict[str, Any]) -> str:
    """The card as YAML text (fields in the schema's order)."""
    import yaml

    if isinstance(card, ModelCard):
        data = card.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    else:
        data = card
    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))


# --------------------------------------------------------------------------- docs


def json_schema() -> dict[str, Any]:
    schema = ModelCard.model_json_schema()
    schema["$id"] = "https://radnode.example/schemas/model-card-v1.json"
    schema["title"] = "radnode model card (model.yaml)"
    return schema


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        parts = [_type_of(p, defs) for p in prop["anyOf"]]
        return " or ".join(p for p in parts if p != "null") + (
            " (optional)" if any(p == "null" for p in parts) else ""
        )
    if "enum" in prop:
        return " / ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type_of(p, defs) for p in prop["prefixItems"]) + "]"
        return f"list of {_type_of(prop.get('items', {}), defs)}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"map to {_type_of(extra, defs)}" if isinstance(extra, dict) else "map"
    return str(kind)


def _rows(schema: dict[str, Any], defs: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    required = set(schema.get("required", []))
    for field, prop in schema.get("properties", {}).items():
        path = f"{prefix}{field}"
        target = prop
        if "anyOf" in prop:
            refs = [p for p in prop["anyOf"] if "$ref" in p]
            target = refs[0] if len(refs) == 1 else prop
        default = prop.get("default")
        note = (
            "required"
            if field in required
            else (f"default `{json.dumps(default)}`" if "default" in prop else "optional")
        )
        desc = (prop.get("description") or target.get("description") or "").replace("|", "\\|")
        if "$ref" in target:
            desc = desc or defs[target["$ref"].rsplit("/", 1)[-1]].get("description", "")
        rows.append(f"| `{path}` | {_type_of(prop, defs)} | {note} | {desc} |")
        if "$ref" in target:
            sub = defs[target["$ref"].rsplit("/", 1)[-1]]
            rows.extend(_rows(sub, defs, f"{path}."))
        elif prop.get("type") == "array" and "$ref" in prop.get("items", {}):
            sub = defs[prop["items"]["$ref"].rsplit("/", 1)[-1]]
            rows.extend(_rows(sub, defs, f"{path}[]."))
    return rows


def reference_markdown() -> str:
    """The card's field reference as a Markdown table (generated from the JSON Schema)."""
    schema = json_schema()
    defs = schema.get("$defs", {})
    head = ["| field | type | | meaning |", "|---|---|---|---|"]
    return "\n".join(head + _rows(schema, defs, "")) + "\n"


DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_DOC = DOCS / "model-card.schema.json"
REFERENCE_DOC = DOCS / "models.md"
_START, _END = "<!-- card-reference:start -->", "<!-- card-reference:end -->"


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def reference_doc(current: str) -> str:
    """``current`` (docs/models.md) with its generated reference section replaced."""
    start, end = current.index(_START), current.index(_END)
    generated = (
        f"{_START}\n<!-- generated by `python -m ai_node.card docs`: do not edit -->\n\n"
        f"{reference_markdown()}"
    )
    return current[:start] + generated + current[end:]


def main(args: list[str] | None = None) -> int:
    """``python -m ai_node.card schema|docs|validate CARD``."""
    parser = argparse.ArgumentParser(prog="python -m ai_node.card")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the card's JSON Schema")
    sub.add_parser("docs", help="write docs/model-card.schema.json and the docs/models.md table")
    check = sub.add_parser("validate", help="validate a model.yaml")
    check.add_argument("card", type=Path)
    ns = parser.parse_args(args)
    if ns.command == "schema":
        sys.stdout.write(schema_text())
    elif ns.command == "docs":
        SCHEMA_DOC.write_text(schema_text())
        REFERENCE_DOC.write_text(reference_doc(REFERENCE_DOC.read_text()))
        print(f"wrote {SCHEMA_DOC} and the reference in {REFERENCE_DOC}")
    else:
        try:
            card = read_card(ns.card)
        except CardError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{card.key}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
