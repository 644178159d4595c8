"""Pipeline step 2, preprocess: each exported study decoded onto the model grid.

The series choice and decoding are the worker's own functions
(:func:`ai_node.preprocess.select_series`, :func:`ai_node.preprocess.load_series`), so the
models are trained and evaluated on exactly what they see in production. Output: one
``.npz`` per study (slices in Hounsfield units, head to feet) and ``manifest.json``
extended with the file and the number of slices of each study. Studies that cannot be
decoded drop out, so the test split's minimum (:func:`ai_node.retrain.split.check_test_split`,
recorded in the manifest by the export) is checked again here, still before training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ai_node.preprocess import InputError, load_series, select_series
from ai_node.retrain.export import MANIFEST
from ai_node.retrain.split import SplitMinimum, check_test_split

logger = logging.getLogger(__name__)


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


def load_study(study_dir: Path) -> np.ndarray:
    """The study's chosen series as (N, S, S) HU slices, as the worker decodes it."""
    choice = select_series(_rows(study_dir), lambda p: pydicom.dcmread(p, stop_before_pixels=True))
    if choice is None:
        raise InputError("no axial CT series")
    return load_series(choice.paths, compressed=choice.compressed).hu


def preprocess_dataset(exported: Path, out_dir: Path) -> dict[str, Any]:
    """Decode every exported study; studies that cannot be decoded are listed, not fatal."""
    manifest = json.loads((exported / MANIFEST).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for study in manifest["studies"]:
        try:
            hu = load_study(exported / study["dir"])
        except InputError as exc:
            manifest["skipped"].append(f"{study['dir']}: {exc}")
            continue
        name = f"{study['dir']}.npz"
        np.savez(out_dir / name, hu=hu.astype(np.float32))
        kept.append({**study, "file": name, "slices": int(hu.shape[0])})
    manifest["studies"] = kept
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("preprocess done", extra={"studies": len(kept)})
    if "test_minimum" in manifest:
        minimum = SplitMinimum.from_dict(manifest["test_minimum"])
        check_test_split(kept, minimum, float(manifest["test_fraction"]))
    return manifest


def split_studies(prepared: Path, split: str) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The studies of one split with their HU slices."""
    manifest = json.loads((prepared / MANIFEST).read_text())
    out = []
    for study in manifest["studies"]:
        if study["split"] == split:
            with np.load(prepared / study["file"]) as data:
                out.append((study, data["hu"]))
    return out
