"""Training: labels from ground truth, disjoint splits, real-data input, and the full CLI run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ai_node.registry import ModelRegistry
from ai_node.synth import StudySpec, generate_study, write_study
from ai_node.train import (
    HELDOUT_PLAN,
    HELDOUT_SEED_BASE,
    TRAIN_PLAN,
    TRAIN_SEED_BASE,
    labelled_dicom_data,
    roc_auc,
    slice_labels,
    synthetic_specs,
)

REPO = Path(__file__).resolve().parents[2]


def test_slice_labels_follow_the_lesion_geometry() -> None:
    study, _ = generate_study(
        StudySpec(region="chest", slices=40, nodules=1, seed=3, rows=64, columns=64)
    )
    [lesion] = study.lesions
    positions = np.asarray(
        [lesion.center_mm[2], lesion.center_mm[2] + lesion.radius_mm - 0.1, 500.0]
    )
    labels, weights = slice_labels(study, positions)
    assert labels.tolist() == [1.0, 0.0, 0.0]
    assert weights.tolist() == [1.0, 0.0, 1.0]  # a grazing cut is left out of the loss


def test_training_and_heldout_studies_never_share_a_seed() -> None:
    train = {s.seed for s in synthetic_specs(TRAIN_PLAN, TRAIN_SEED_BASE)}
    held = {s.seed for s in synthetic_specs(HELDOUT_PLAN, HELDOUT_SEED_BASE)}
    assert not train & held
    assert synthetic_specs(HELDOUT_PLAN, HELDOUT_SEED_BASE) == synthetic_specs(
        HELDOUT_PLAN, HELDOUT_SEED_BASE
    )


def test_roc_auc() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5


def test_kaggle_layout_and_csv_labels(tmp_path) -> None:
    src = tmp_path / "src"
    _, files = write_study(StudySpec(region="chest", slices=2, seed=4, rows=64, columns=64), src)
    kaggle = tmp_path / "dicom_dir"
    kaggle.mkdir()
    shutil.copy(files[0], kaggle / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm")
    shutil.copy(files[1], kaggle / "ID_0001_AGE_0070_CONTRAST_0_CT.dcm")
    data = labelled_dicom_data(kaggle, None)
    assert sorted(data.finding_y.tolist()) == [0.0, 1.0]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nIM000001.dcm,0\nIM000002.dcm,1\n")
    data = labelled_dicom_data(src, csv)
    assert data.finding_y.tolist() == [0.0, 1.0] and data.finding_x.shape == (2, 128, 128, 1)


@pytest.mark.slow
def test_model_train_synthetic_reproduces_the_shipped_models(tmp_path) -> None:
    """`radnode model train --synthetic` (about 4 minutes on 2 cores)."""
    out = tmp_path / "models"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            "model",
            "train",
            "--synthetic",
            "--version",
            "repro",
            "--activate",
            "--models-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out metrics" in proc.stdout and "AUC" in proc.stdout
    shipped = ModelRegistry()
    for task in ("region", "finding"):
        card = ModelRegistry(out).card(task, "repro")
        reference = shipped.card(task, shipped.active_version(task))
        for name, value in reference["metrics"].items():
            if isinstance(value, float) and name in ("accuracy", "auc"):
                assert card["metrics"][name] >= value - 0.03, (task, name)


def test_train_on_a_labelled_dicom_folder_saves_a_finding_version(tmp_path) -> None:
    from ai_node.train import train_and_save

    src = tmp_path / "src"
    _, files = write_study(StudySpec(region="chest", slices=4, seed=6, rows=64, columns=64), src)
    (tmp_path / "labels.csv").write_text(
        "file,label\n" + "".join(f"{f.name},{i % 2}\n" for i, f in enumerate(files))
    )
    registry = ModelRegistry(tmp_path / "models")
    run = train_and_save(
        registry, "real-1", synthetic=False, dicom_dir=src, labels_csv=tmp_path / "labels.csv",
        finding_epochs=1, verbose=0,
    )
    assert set(run.paths) == {"finding"} and run.metrics is None
    card = registry.card("finding", "real-1")
    assert "labelled DICOM" in card["training_data"] and "metrics" not in card
    assert registry.versions("finding") == ["real-1"]
