"""Which models a study is for: each active model's card ``applicability`` against the
study's series, and the series (or images) each model is to see.

Rules that the stored headers decide are checked here, per series: Modality and SOP
Class, Series Description (a regular expression), the slice (image) count, a body part
rule on Body Part Examined (``source: tag``). A body part rule on another model's
verdict (``source: model``) is decided after that model has run (:mod:`ai_node.pipeline`).

* ``input.kind: slice`` (a CT volume): among the matching series that are axial and not
  localizers (PS3.3 C.7.6.2.1.1, C.8.2.1.1.1), the one with the most frames.
* ``input.kind: image`` (radiographs): every image of every matching series; one image
  is one slice.

A model that is for no series of the study is simply not for it; the reason is kept
(the study's ``out_of_scope`` result names them when no model is for it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ai_node.card import ModelCard
from ai_node.preprocess import is_axial, is_localizer

logger = logging.getLogger(__name__)

NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
"""Implicit and explicit VR little endian, explicit VR big endian: not compressed."""


@dataclass(frozen=True)
class SeriesInfo:
    """What the routing rules read of one series: its index rows and one header."""

    series_uid: str
    rows: list[dict[str, Any]]
    modality: str
    description: str | None
    body_part: str | None
    localizer: bool
    axial: bool
    frames: int

    @property
    def sop_classes(self) -> set[str]:
        return {str(r["sop_class_uid"]) for r in self.rows}


@dataclass(frozen=True)
class Assignment:
    """A model and the stored files it is to see."""

    card: ModelCard
    series_uids: tuple[str, ...]
    paths: tuple[Path, ...]
    frames: int
    compressed: bool

    @property
    def name(self) -> str:
        return self.card.name


@dataclass
class Route:
    """The models a study is for, and why the others are not."""

    assignments: list[Assignment] = field(default_factory=list)
    not_for: dict[str, str] = field(default_factory=dict)

    def reason(self) -> str:
        why = "; ".join(f"{name}: {text}" for name, text in sorted(self.not_for.items()))
        return f"no active model is for this study ({why or 'no active model'})"


def describe_series(
    instances: Sequence[dict[str, Any]],
    open_header: Callable[[str], Dataset],
    sop_classes: set[str] | None = None,
) -> list[SeriesInfo]:
    """The study's series (of ``sop_classes`` when given), one header read for each."""
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in instances:
        if sop_classes is None or str(row["sop_class_uid"]) in sop_classes:
            by_series.setdefault(str(row["series_uid"]), []).append(row)
    out = []
    for series_uid, rows in by_series.items():
        try:
            header = open_header(rows[0]["path"])
        except Exception as exc:  # noqa: BLE001 - an unreadable header rules the series out
            logger.warning(
                "series header unreadable", extra={"series_uid": series_uid, "error": str(exc)}
            )
            continue
        frames = len(rows)
        if len(rows) == 1:
            try:
                frames = int(header.get("NumberOfFrames") or 1)
            except (TypeError, ValueError):
                frames = 1
        part = header.get("BodyPartExamined")
        description = header.get("SeriesDescription")
        out.append(
            SeriesInfo(
                series_uid=series_uid,
                rows=rows,
                modality=str(header.get("Modality", "") or ""),
                description=str(description) if description else None,
                body_part=str(part).strip() if part else None,
                localizer=is_localizer(header),
                axial=is_axial(header),
                frames=frames,
            )
        )
    return out


def _mismatch(card: ModelCard, series: SeriesInfo) -> str | None:
    """Why ``series`` is not for ``card`` (the first rule that fails), or None."""
    rules = card.applicability
    if series.modality.upper() not in {m.upper() for m in rules.modalities}:
        return f"modality {series.modality or '(none)'} not in {', '.join(rules.modalities)}"
    classes = series.sop_classes & set(rules.sop_classes)
    if not classes:
        return "SOP class " + ", ".join(sorted(series.sop_classes)) + " not listed"
    if rules.series_description is not None and not (
        series.description and re.search(rules.series_description, series.description, re.I)
    ):
        return f"series description {series.description!r} does not match"
    if card.input.kind == "slice" and (series.localizer or not series.axial):
        return "a localizer or not axial"
    body = rules.body_part
    if body is not None and body.source == "tag" and not body.accepts(series.body_part):
        return f"body part examined {series.body_part or '(none)'} not in {', '.join(body.any_of)}"
    return None


def _compressed(rows: Sequence[dict[str, Any]]) -> bool:
    return any(str(r.get("transfer_syntax_uid") or "") not in NATIVE_SYNTAXES for r in rows)


def assign(card: ModelCard, series: Sequence[SeriesInfo]) -> Assignment | str:
    """The files ``card``'s model is to see in a study, or why it is not for the study."""
    reasons: list[str] = []
    matching: list[SeriesInfo] = []
    for s in series:
        why = _mismatch(card, s)
        if why is None:
            matching.append(s)
        else:
            reasons.append(why)
    if not matching:
        return "; ".join(dict.fromkeys(reasons)) if reasons else "no series"
    wanted = set(card.applicability.sop_classes)
    count = card.applicability.slices
    if card.input.kind == "slice":
        best = max(matching, key=lambda s: s.frames)
        chosen = [best]
        frames = best.frames
    else:
        chosen = matching
        frames = sum(len([r for r in s.rows if str(r["sop_class_uid"]) in wanted]) for s in chosen)
    if not count.min <= frames <= count.max:
        return f"{frames} slice(s), the model takes {count.min}..{count.max}"
    rows = [r for s in chosen for r in s.rows if str(r["sop_class_uid"]) in wanted]
    return Assignment(
        card=card,
        series_uids=tuple(s.series_uid for s in chosen),
        paths=tuple(Path(str(r["path"])) for r in rows),
        frames=frames,
        compressed=_compressed(rows),
    )


def route(
    cards: Sequence[ModelCard],
    instances: Sequence[dict[str, Any]],
    open_header: Callable[[str], Dataset],
) -> Route:
    """The assignments of every card's model for one study's instances."""
    wanted: set[str] = {uid for card in cards for uid in card.applicability.sop_classes}
    series = describe_series(instances, open_header, wanted)
    out = Route()
    for card in cards:
        result = assign(card, series)
        if isinstance(result, str):
            out.not_for[card.name] = result
        else:
            out.assignments.append(result)
    if not series:
        classes = sorted({str(r["sop_class_uid"]) for r in instances})
        for card in cards:
            out.not_for[card.name] = (
                f"no series of its SOP classes (study has {', '.join(classes) or 'nothing'})"
            )
    return out
