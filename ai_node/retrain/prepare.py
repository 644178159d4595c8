"""Pipeline step 2, preprocess: each exported study decoded as the analysis pipeline
decodes it for the retrained model.

The model's card (the export step put the active version's card in the manifest) says
which series or images the model sees and at what size: the worker's own routing
(:func:`ai_node.routing.describe_series`, :func:`ai_node.routing.assign`: Modality, SOP
Class, Series Description, slice count, a ``source: tag`` body part rule; for ``kind:
slice`` the axial, non-localizer series with the most slices, for ``kind: image`` every
matching image) and decoding (:func:`ai_node.preprocess.load_series` at the card's input
size), imported, not copied, so the models are trained and evaluated on exactly what they
see in production. A body part rule on another model's verdict (``source: model``) is
not decided again: a radiologist judged the model's result, so the study was in scope.

Output: one ``.npz`` per study (``hu``: the slices or images on the model grid, in
Hounsfield units for CT and stored values through the Modality LUT for radiographs, head
to feet; ``monochrome1``: which are MONOCHROME1) and ``manifest.json`` extended with the
file and the number of slices (images) of each study. The model input
(:func:`ai_node.preprocess.card_input`) is computed from them by the train and evaluate
steps, as the worker computes it. Studies that cannot be decoded drop out, so the test
split's minimum (:func:`ai_node.retrain.split.check_test_split`, recorded in the manifest
by the export) is checked again here, still before training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ai_node.card import ModelCard, parse_card
from ai_node.preprocess import InputError, load_series
from ai_node.registry import ModelRegistry
from ai_node.retrain.export import MANIFEST
from ai_node.retrain.split import SplitMinimum, check_test_split
from ai_node.routing import assign, describe_series

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "finding"
"""The model of a manifest that names none (the shipped finding model)."""


def _rows(study_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(study_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append(
            {
                "sop_class_uid": str(ds.SOPClassUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "path": str(path),
                "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
            }
        )
    return rows


def _header(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@dataclass
class PreparedStudy:
    """One study as the model sees it: the manifest's entry, the slices (images) on the
    model grid and which of them are MONOCHROME1."""

    study: dict[str, Any]
    hu: np.ndarray
    monochrome1: np.ndarray | None = None


def manifest_model(manifest: dict[str, Any]) -> tuple[str, ModelCard | None]:
    """The retrained model's name and the card the export recorded (None: not recorded)."""
    model = manifest.get("model") or {}
    card = model.get("card")
    return str(model.get("name") or DEFAULT_MODEL), parse_card(card) if card else None


def shipped_card(name: str = DEFAULT_MODEL) -> ModelCard:
    """The active card of a shipped model (a manifest without a card: the finding model)."""
    shipped = ModelRegistry()
    return shipped.model_card(name, shipped.active_version(name))


def load_study(study_dir: Path, card: ModelCard | None = None) -> PreparedStudy:
    """The series (or images) the model of ``card`` sees in the study, decoded as the
    worker decodes them (module docstring)."""
    card = card or shipped_card()
    series = describe_series(_rows(study_dir), _header, set(card.applicability.sop_classes))
    assignment = assign(card, series)
    if isinstance(assignment, str):
        raise InputError(f"not for {card.name}: {assignment}")
    stack = load_series(
        assignment.paths, size=card.input.size[0], compressed=assignment.compressed
    )
    return PreparedStudy({}, stack.hu, stack.monochrome1)


def preprocess_dataset(exported: Path, out_dir: Path) -> dict[str, Any]:
    """Decode every exported study; studies that cannot be decoded are listed, not fatal."""
    manifest = json.loads((exported / MANIFEST).read_text())
    name, card = manifest_model(manifest)
    card = card or shipped_card(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for study in manifest["studies"]:
        try:
            prepared = load_study(exported / study["dir"], card)
        except InputError as exc:
            manifest["skipped"].append(f"{study['dir']}: {exc}")
            continue
        file = f"{study['dir']}.npz"
        m1 = prepared.monochrome1
        np.savez(
            out_dir / file,
            hu=prepared.hu.astype(np.float32),
            monochrome1=np.zeros(len(prepared.hu), bool) if m1 is None else m1,
        )
        kept.append({**study, "file": file, "slices": int(prepared.hu.shape[0])})
    manifest["studies"] = kept
    manifest["model"] = {**manifest.get("model", {}), "name": name, "card": card.as_dict()}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("preprocess done", extra={"studies": len(kept), "model": name})
    if "test_minimum" in manifest:
        minimum = SplitMinimum.from_dict(manifest["test_minimum"])
        check_test_split(kept, minimum, float(manifest["test_fraction"]))
    return manifest


def prepared_model(prepared: Path) -> tuple[str, ModelCard]:
    """The model a prepared data set is for, and the card it was decoded by."""
    name, card = manifest_model(json.loads((prepared / MANIFEST).read_text()))
    return name, card or shipped_card(name)


def split_inputs(prepared: Path, split: str) -> list[PreparedStudy]:
    """The studies of one split with their slices (images) and MONOCHROME1 flags."""
    manifest = json.loads((prepared / MANIFEST).read_text())
    out = []
    for study in manifest["studies"]:
        if study["split"] == split:
            with np.load(prepared / study["file"]) as data:
                m1 = data["monochrome1"] if "monochrome1" in data.files else None
                out.append(
                    PreparedStudy(
                        study, data["hu"], m1 if m1 is not None and m1.any() else None
                    )
                )
    return out


def split_studies(prepared: Path, split: str) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The studies of one split with their slices (images) on the model grid."""
    return [(p.study, p.hu) for p in split_inputs(prepared, split)]
