"""The shipped chest X-ray opacity model: its package, its card, and its held-out metrics.

The held-out test regenerates the held-out radiographs, reads them through the
preprocessing the card declares, runs the shipped model and computes AUC,
sensitivity and specificity itself; it reads the card only to compare.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydicom.sr.codedict import codes

from ai_node.labels import OPACITY_LABELS
from ai_node.registry import SHIPPED_MODELS
from ai_node.xray_preprocess import image_input_of, radiograph_input
from ai_node.xray_synth import SOP_CLASSES, XraySpec, generate_radiograph
from ai_node.xray_train import (
    GRID_STRIDE,
    HELDOUT_PLAN,
    INPUT,
    MODEL_NAME,
    TRAIN_PLAN,
    XrayPlan,
    metrics_of,
    opacity_map,
    plan_specs,
    train_and_save_xray,
)
from tests.support.radnode_process import REPO

PACKAGE = SHIPPED_MODELS / MODEL_NAME / "1.0.0"


def read_card(folder: Path) -> dict[str, Any]:
    card = yaml.safe_load((folder / "model.yaml").read_text())
    assert isinstance(card, dict)
    return card


def resolve(name: str) -> Any:
    scheme, keyword = name.split(".")
    return getattr(getattr(codes, scheme), keyword)


def auc(labels: list[int], scores: list[float]) -> float:
    pairs = [
        (p, n)
        for p, yp in zip(scores, labels, strict=True)
        if yp
        for n, yn in zip(scores, labels, strict=True)
        if not yn
    ]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return read_card(PACKAGE)


# --------------------------------------------------------------------------- package


def test_package_is_small_and_its_digest_matches(card: dict[str, Any]) -> None:
    model_file = PACKAGE / card["model_file"]
    assert model_file.name == "model.keras"
    assert model_file.stat().st_size < 2 * 2**20
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == card["sha256"]
    assert (PACKAGE.parent / "ACTIVE").read_text().strip() == "1.0.0"


def test_package_data_globs_ship_the_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["ai_node"]
    root = SHIPPED_MODELS.parent
    shipped = {p for pattern in globs for p in root.glob(pattern)}
    for name in ("model.keras", "model.yaml"):
        assert PACKAGE / name in shipped
    assert PACKAGE.parent / "ACTIVE" in shipped


def test_card_says_what_the_model_is_and_is_not(card: dict[str, Any]) -> None:
    assert (card["name"], card["version"], card["task"]) == (MODEL_NAME, "1.0.0", "binary")
    assert "NOT FOR CLINICAL USE" in card["intended_use"]
    assert "synthetic" in card["intended_use"]
    assert "synthetic" in card["limitations"] and "real" in card["limitations"]
    applicability = card["applicability"]
    assert applicability["modalities"] == ["CR", "DX"]
    assert set(applicability["sop_classes"]) == set(SOP_CLASSES.values())
    assert applicability["body_part"] == {"any_of": ["CHEST"], "source": "tag"}
    assert applicability["slices"] == {"min": 1, "max": 4}
    assert "aggregation" not in card
    assert card["input"]["kind"] == "image"
    assert image_input_of(card["input"]) == INPUT
    assert card["outputs"]["labels"] == list(OPACITY_LABELS)
    assert card["outputs"]["positive_label"] == "opacity"
    assert resolve(card["sr"]["finding"]) == codes.DCM.AbnormalOpacity
    assert resolve(card["sr"]["finding_site"]) == codes.SCT.Lung
    start, stop = TRAIN_PLAN.seeds.start, TRAIN_PLAN.seeds.stop - 1
    assert f"seeds {start}..{stop}" in card["training_data"]
    assert f"seeds {HELDOUT_PLAN.seeds.start}.." in card["metrics"]["heldout"]
    assert card["metrics"]["threshold"] == card["outputs"]["threshold"]


def test_card_validates_against_the_model_card_schema(card: dict[str, Any]) -> None:
    card_module = pytest.importorskip("ai_node.card")
    parsed = card_module.parse_card(card)
    assert parsed.name == MODEL_NAME and parsed.input.kind == "image"


def test_training_and_heldout_radiographs_never_share_a_patient() -> None:
    train = {spec.seed for spec in plan_specs(TRAIN_PLAN)}
    held = {spec.seed for spec in plan_specs(HELDOUT_PLAN)}
    assert not train & held
    assert len(held) == HELDOUT_PLAN.total  # one image per held-out patient
    specs = plan_specs(HELDOUT_PLAN)
    assert sum(1 for s in specs if s.opacities) == HELDOUT_PLAN.with_opacities
    assert {s.sop_class for s in specs} == {"cr", "dx"}
    assert {s.monochrome1 for s in specs} == {False, True}
    assert len({s.bits for s in specs}) > 2 and len({s.size for s in specs}) > 2


def test_paired_training_plan_holds_twins() -> None:
    specs = plan_specs(XrayPlan(3, 3, 50, paired=True))
    assert [(s.seed, bool(s.opacities)) for s in specs] == [
        (50, True),
        (51, True),
        (52, True),
        (50, False),
        (51, False),
        (52, False),
    ]
    assert specs[0].size == specs[3].size and specs[0].bits == specs[3].bits
    with pytest.raises(ValueError):
        XrayPlan(1, 2, 0, paired=True)


def test_metrics_of() -> None:
    m = metrics_of([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1, 0.2], 0.5)
    assert m.auc == pytest.approx(5 / 6)
    assert (m.sensitivity, m.specificity) == (0.5, pytest.approx(2 / 3))
    assert (m.images, m.with_opacities, m.without) == (5, 2, 3)


def test_opacity_map_covers_the_opacities() -> None:
    spec = XraySpec(seed=12, opacities=2, size=512, monochrome1=True)
    truth, ds = generate_radiograph(spec)
    image = radiograph_input(ds, INPUT)
    cells = opacity_map(truth.opacities, image, spec.pixel_spacing_mm)
    assert cells.shape == (INPUT.size[0] // GRID_STRIDE,) * 2
    assert 0.0 <= cells.min() and cells.max() <= 1.0
    cell_px = image.factor * GRID_STRIDE  # source pixels per map cell
    area = sum(
        np.pi * (o.radius_mm / spec.pixel_spacing_mm) ** 2 * o.aspect for o in truth.opacities
    )
    assert cells.sum() == pytest.approx(area / cell_px**2, rel=0.1)
    for opacity in truth.opacities:
        row, col = image.to_model_px(*opacity.center_px)
        assert cells[int(row // GRID_STRIDE), int(col // GRID_STRIDE)] > 0.5
    assert not opacity_map((), image, spec.pixel_spacing_mm).any()


# --------------------------------------------------------------------------- held out


def test_heldout_metrics_equal_the_card(card: dict[str, Any]) -> None:
    """20-60 s on 2 shared cores: 200 radiographs generated, read and scored."""
    import keras

    model = keras.saving.load_model(PACKAGE / card["model_file"], compile=False)
    how = image_input_of(card["input"])
    threshold = card["outputs"]["threshold"]
    labels: list[int] = []
    scores: list[float] = []
    batch: list[np.ndarray] = []
    specs = plan_specs(HELDOUT_PLAN)
    for i, spec in enumerate(specs):
        image, ds = generate_radiograph(spec)
        labels.append(int(bool(image.opacities)))
        batch.append(radiograph_input(ds, how).array)
        if len(batch) == 32 or i == len(specs) - 1:
            out = model(np.stack(batch), training=False)
            scores.extend(float(v) for v in np.asarray(out).reshape(-1))
            batch = []
    truth = np.asarray(labels) == 1
    called = np.asarray(scores) >= threshold
    recomputed = {
        "auc": auc(labels, scores),
        "sensitivity": (called & truth).sum() / truth.sum(),
        "specificity": (~called & ~truth).sum() / (~truth).sum(),
    }
    reported = card["metrics"]
    assert reported["images"] == len(specs)
    assert reported["with_opacities"] == int(truth.sum())
    for name, value in recomputed.items():
        assert round(float(value), 4) == pytest.approx(reported[name], abs=1e-9), name


# --------------------------------------------------------------------------- training


def test_training_writes_a_package(tmp_path: Path) -> None:
    run = train_and_save_xray(
        tmp_path,
        "tiny",
        epochs=1,
        verbose=0,
        activate=True,
        train_plan=XrayPlan(4, 4, 7_000, paired=True),
        heldout_plan=XrayPlan(2, 2, 8_000),
    )
    folder = tmp_path / MODEL_NAME / "tiny"
    assert run.path == folder
    card = read_card(folder)
    digest = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    assert card["sha256"] == digest
    assert card["metrics"]["images"] == 4
    assert "seeds 7000..7003" in card["training_data"]
    assert (tmp_path / MODEL_NAME / "ACTIVE").read_text() == "tiny\n"
    assert not list((tmp_path / MODEL_NAME).glob(".*"))
    with pytest.raises(FileExistsError):
        train_and_save_xray(
            tmp_path,
            "tiny",
            epochs=1,
            verbose=0,
            train_plan=XrayPlan(1, 1, 7_000, paired=True),
            heldout_plan=None,
        )


def test_model_train_xray_needs_synthetic(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "radnode.cli", "model", "train", "--kind", "xray"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "--synthetic" in proc.stderr


@pytest.mark.slow
def test_model_train_xray_reproduces_the_shipped_model(
    tmp_path: Path, card: dict[str, Any]
) -> None:
    """`radnode model train --synthetic --kind xray` (about 15 minutes on 2 cores)."""
    out = tmp_path / "models"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            "model",
            "train",
            "--synthetic",
            "--kind",
            "xray",
            "--version",
            "repro",
            "--models-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out metrics" in proc.stdout and "AUC" in proc.stdout
    repro = read_card(out / MODEL_NAME / "repro")
    assert repro["metrics"]["auc"] >= card["metrics"]["auc"] - 0.03
    assert not (out / MODEL_NAME / "ACTIVE").exists()
