"""How well the shipped models mark their findings, on held-out synthetic data whose truth
records each lesion's (opacity's) position.

Each study (radiograph) goes through the worker's own path: the same preprocessing, the
same score and threshold, the same mark (:func:`ai_node.analysis.locate_finding`). A mark
is a **hit** when it lies within a lesion's radius plus :data:`TOLERANCE_MM` of its centre:
for CT in 3D (the mark sits on its slice's plane), for radiographs in the detector plane.
Reported per model:

* ``hit_rate``: the share of studies with a finding whose mark hits one (a study the model
  misses has no mark: it counts as no hit);
* ``hit_rate_flagged``: the same among those the model flagged;
* ``false_marks_per_study``: marks that hit no lesion (on a study without one, every mark),
  per study evaluated.

``python -m ai_node.localisation_metrics [ct|xray] [--limit N]`` prints them as JSON (the
numbers in the shipped cards' ``metrics.localisation``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ai_node.analysis import Models, analyse, locate_finding, model_input
from ai_node.localise import Location
from ai_node.models import LoadedModel
from ai_node.preprocess import load_datasets
from ai_node.synth import StudySpec, generate_study
from ai_node.xray_synth import XraySpec, generate_radiograph

TOLERANCE_MM = 5.0
"""How far outside a lesion's radius a mark may fall and still hit it."""


@dataclass
class LocalisationMetrics:
    """Hit rate and false marks of one model on one data set."""

    studies: int = 0
    positive: int = 0
    flagged_positive: int = 0
    hits: int = 0
    false_marks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.positive if self.positive else 0.0

    @property
    def hit_rate_flagged(self) -> float:
        return self.hits / self.flagged_positive if self.flagged_positive else 0.0

    @property
    def false_marks_per_study(self) -> float:
        return self.false_marks / self.studies if self.studies else 0.0

    def add(self, positive: bool, marked: bool, hit: bool) -> None:
        self.studies += 1
        self.positive += positive
        self.flagged_positive += positive and marked
        self.hits += hit
        self.false_marks += marked and not hit

    def as_card(self) -> dict[str, float | int]:
        return {
            "hit_rate": round(self.hit_rate, 4),
            "hit_rate_flagged": round(self.hit_rate_flagged, 4),
            "false_marks_per_study": round(self.false_marks_per_study, 4),
            "tolerance_mm": TOLERANCE_MM,
            **asdict(self),
        }


def mark_mm(location: Location, header: object) -> tuple[float, float, float]:
    """The patient coordinates (LPS, mm) of a mark on an axial CT slice (PS3.3 C.7.6.2.1.1)."""
    ipp = [float(v) for v in getattr(header, "ImagePositionPatient")]  # noqa: B009
    iop = [float(v) for v in getattr(header, "ImageOrientationPatient")]  # noqa: B009
    row_spacing, col_spacing = (float(v) for v in getattr(header, "PixelSpacing"))  # noqa: B009
    # pixel indices of the mark: PS3.3 C.18.6.1.1 puts pixel centres at +0.5
    i, j = location.column - 0.5, location.row - 0.5
    return (
        ipp[0] + iop[0] * col_spacing * i + iop[3] * row_spacing * j,
        ipp[1] + iop[1] * col_spacing * i + iop[4] * row_spacing * j,
        ipp[2] + iop[2] * col_spacing * i + iop[5] * row_spacing * j,
    )


def ct_metrics(models: Models, specs: Sequence[StudySpec], threshold: float) -> LocalisationMetrics:
    """The ``finding`` model's marks on chest studies ``specs`` (with and without lesions)."""
    out = LocalisationMetrics()
    for spec in specs:
        study, datasets = generate_study(spec)
        slices = list(datasets)
        stack = load_datasets(slices)
        stack.headers = {str(ds.SOPInstanceUID): ds for ds in slices}
        result = analyse(stack, models, threshold, in_scope_regions=(spec.region,))
        location = result.location
        hit = False
        if location is not None:
            point = mark_mm(location, stack.headers[location.ref.sop_instance_uid])
            hit = any(
                math.dist(point, lesion.center_mm) <= lesion.radius_mm + TOLERANCE_MM
                for lesion in study.lesions
            )
        out.add(bool(study.lesions), location is not None, hit)
    return out


def xray_metrics(
    model: LoadedModel, specs: Sequence[XraySpec], threshold: float
) -> LocalisationMetrics:
    """A radiograph model's marks on the radiographs ``specs``."""
    out = LocalisationMetrics()
    for spec in specs:
        truth, ds = generate_radiograph(spec)
        stack = load_datasets([ds], model.size)
        stack.headers = {str(ds.SOPInstanceUID): ds}
        score = float(model.positive(model.predict_batched(model_input(model, stack)))[0])
        location = locate_finding(model, stack, 0) if score >= threshold else None
        hit = False
        if location is not None:
            row, column = location.row - 0.5, location.column - 0.5
            hit = any(
                math.dist((row, column), o.center_px) * spec.pixel_spacing_mm
                <= o.radius_mm + TOLERANCE_MM
                for o in truth.opacities
            )
        out.add(bool(truth.opacities), location is not None, hit)
    return out


def heldout_ct(models: Models, limit: int | None = None) -> LocalisationMetrics:
    """The CT metrics on the held-out chest studies (the first ``limit`` with lesions and
    ``limit`` without, when given)."""
    from ai_node.train import HELDOUT_PLAN, HELDOUT_SEED_BASE, synthetic_specs

    chest = [s for s in synthetic_specs(HELDOUT_PLAN, HELDOUT_SEED_BASE) if s.region == "chest"]
    with_lesions = [s for s in chest if s.nodules]
    without = [s for s in chest if not s.nodules]
    if limit is not None:
        with_lesions, without = with_lesions[:limit], without[:limit]
    card = models.get("finding").card
    threshold = card.operating_threshold
    return ct_metrics(models, [*with_lesions, *without], threshold if threshold else 0.5)


def heldout_xray(model: LoadedModel, limit: int | None = None) -> LocalisationMetrics:
    """The radiograph metrics on the held-out radiographs (``limit`` of each kind)."""
    from ai_node.xray_train import HELDOUT_PLAN, plan_specs

    specs = plan_specs(HELDOUT_PLAN)
    with_opacities = [s for s in specs if s.opacities]
    without = [s for s in specs if not s.opacities]
    if limit is not None:
        with_opacities, without = with_opacities[:limit], without[:limit]
    threshold = model.card.operating_threshold
    return xray_metrics(model, [*with_opacities, *without], threshold if threshold else 0.5)


def main(args: list[str] | None = None) -> int:
    from ai_node.registry import ModelRegistry, ModelSet

    parser = argparse.ArgumentParser(prog="python -m ai_node.localisation_metrics")
    parser.add_argument("kind", choices=("ct", "xray"))
    parser.add_argument("--limit", type=int, default=None)
    ns = parser.parse_args(args)
    models = ModelSet(ModelRegistry())
    if ns.kind == "ct":
        metrics = heldout_ct(models, ns.limit)
    else:
        metrics = heldout_xray(models.get("chest-xray-opacity"), ns.limit)
    print(json.dumps(metrics.as_card(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
