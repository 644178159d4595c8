"""The models' labels, defined once: the finding labels (the AI's label, a radiologist's
relabel, the targets retraining learns) and the body regions.

A study the finding model evaluated is ``lesion`` (its score at or above the threshold)
or ``no lesion``. In an SR the label is the value of the "Lesion" qualitative evaluation
of the TID 1501 measurement group: SNOMED CT "Present" or "Absent". For training it is
the finding model's target, 1 or 0: the model's sigmoid output is the probability of
``lesion``. The review UI reads the vocabulary from ``GET /api/labels``.

The region model classifies a study as one of the body regions; the SR names it as the
"Target Region" qualitative evaluation, coded in SNOMED CT.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LESION = "lesion"
NO_LESION = "no lesion"

FINDING_LABELS: tuple[str, ...] = (NO_LESION, LESION)
"""Every finding label, in the order of the finding model's target (index = 0 / 1)."""

POSITIVE = LESION
"""The label a reader acts on (the worklist marks it)."""

SR_CODES: dict[str, Code] = {NO_LESION: codes.SCT.Absent, LESION: codes.SCT.Present}
"""Each label as the coded value of the SR's "Lesion" qualitative evaluation."""

TARGETS: dict[str, int] = {label: i for i, label in enumerate(FINDING_LABELS)}
"""Each label as the finding model's training target."""


REGION_LABELS: tuple[str, ...] = ("chest", "head", "abdomen")
"""The region model's classes, in the order of its output."""

REGION_CODES: dict[str, Code] = {
    "chest": codes.SCT.Chest,
    "head": codes.SCT.Head,
    "abdomen": codes.SCT.Abdomen,
}
"""Each region as the coded value of the SR's "Target Region" evaluation."""


def finding_label(score: float, threshold: float) -> str:
    """The label of a study whose finding score is ``score``."""
    return LESION if score >= threshold else NO_LESION


OPACITY = "opacity"
NO_OPACITY = "no opacity"

OPACITY_LABELS: tuple[str, ...] = (NO_OPACITY, OPACITY)
"""The chest X-ray opacity model's labels, in the order of its target (index = 0 / 1):
its sigmoid output is the probability of ``opacity``."""
