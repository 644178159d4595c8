"""Tests for ai_node.xray_synth: determinism, DICOM conformance, anatomy, opacities, CLI."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from ai_node.labels import NO_OPACITY, OPACITY
from ai_node.xray_synth import (
    Opacity,
    SyntheticRadiograph,
    XraySpec,
    generate_radiograph,
    write_radiographs,
)
from tests.support.radnode_process import RADNODE, REPO
from tests.support.tools import dciodvfy

# 430 mm of detector in 256 pixels (1.68 mm): the anatomy and opacities at low cost.
SMALL = XraySpec(size=256)


def small(**changes: Any) -> XraySpec:
    return replace(SMALL, **changes)


def pixels(spec: XraySpec) -> tuple[SyntheticRadiograph, np.ndarray]:
    image, ds = generate_radiograph(spec)
    return image, ds.pixel_array.astype(np.float64)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius_px: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius_px


# --------------------------------------------------------------------------- determinism


def test_same_spec_gives_identical_pixels_and_uids() -> None:
    spec = small(seed=42, opacities=2)
    a, ds_a = generate_radiograph(spec)
    b, ds_b = generate_radiograph(spec)
    assert a == b
    assert ds_a.PixelData == ds_b.PixelData
    assert ds_a.SOPInstanceUID == ds_b.SOPInstanceUID == a.sop_instance_uid
    assert ds_a.StudyInstanceUID == a.study_instance_uid


def test_other_seed_gives_other_patient() -> None:
    a, ds_a = generate_radiograph(small(seed=1))
    b, ds_b = generate_radiograph(small(seed=2))
    assert a.study_instance_uid != b.study_instance_uid
    assert a.sop_instance_uid != b.sop_instance_uid
    assert a.patient_id != b.patient_id
    assert ds_a.PixelData != ds_b.PixelData


def test_opacity_positions_in_mm_do_not_depend_on_the_matrix() -> None:
    low = generate_radiograph(small(seed=9, opacities=2))[0]
    high = generate_radiograph(small(seed=9, opacities=2, size=512))[0]
    for o_low, o_high in zip(low.opacities, high.opacities, strict=True):
        assert o_low.radius_mm == o_high.radius_mm
        for a, b in zip(o_low.center_px, o_high.center_px, strict=True):
            # pixel centres: (i + 0.5) * spacing is the same point in mm
            assert math.isclose((a + 0.5) * 2, b + 0.5, abs_tol=0.01)


# --------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"monochrome1": True, "bits": 10, "opacities": 1},
        {"sop_class": "cr", "bits": 16, "monochrome1": True},
        {"sop_class": "cr", "bits": 14, "opacities": 2},
    ],
    ids=["dx-mono2-12", "dx-mono1-10", "cr-mono1-16", "cr-mono2-14"],
)
def test_every_variant_passes_dciodvfy(tmp_path: Path, changes: dict[str, Any]) -> None:
    _, [path] = write_radiographs(small(seed=3, **changes), tmp_path)
    report = dciodvfy(path)
    assert "Error" not in report, report
    assert "Warning" not in report, report


def test_dx_header(tmp_path: Path) -> None:
    spec = small(seed=5, opacities=1)
    _, [path] = write_radiographs(spec, tmp_path)
    raw = path.read_bytes()
    assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == "DX"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ViewPosition == "PA"
    assert ds.BodyPartExamined == "CHEST"
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.PresentationLUTShape == "IDENTITY"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert [float(v) for v in ds.ImagerPixelSpacing] == [spec.pixel_spacing_mm] * 2
    ermf = float(ds.EstimatedRadiographicMagnificationFactor)
    assert ds.PixelSpacingCalibrationType == "GEOMETRY"
    for value in ds.PixelSpacing:
        assert math.isclose(float(value) * ermf, spec.pixel_spacing_mm, rel_tol=1e-5)
    assert ds.AnatomicRegionSequence[0].CodeValue == "816094009"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        assert str(ds.get(keyword, "")).strip(), keyword
    assert ds.PatientID == "SYX000005"
    assert ds.pixel_array.shape == (256, 256)
    assert int(ds.pixel_array.max()) <= 4095


def test_cr_header() -> None:
    _, ds = generate_radiograph(small(sop_class="cr", bits=16))
    assert ds.SOPClassUID == ComputedRadiographyImageStorage
    assert ds.Modality == "CR"
    assert ds.ViewPosition == "PA"
    assert ds.BodyPartExamined == "CHEST"
    assert "PresentationIntentType" not in ds
    assert [float(v) for v in ds.ImagerPixelSpacing] == [SMALL.pixel_spacing_mm] * 2
    assert ds.BitsStored == 16 and ds.HighBit == 15


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_stored_values_use_the_bits(bits: int) -> None:
    _, values = pixels(small(bits=bits))
    top = (1 << bits) - 1
    assert values.min() >= 0 and values.max() <= top
    assert values.max() > 0.6 * top  # the range is used, not just its bottom


def test_monochrome1_stores_the_inverse() -> None:
    _, mono2 = pixels(small(seed=6, opacities=1))
    image, ds = generate_radiograph(small(seed=6, opacities=1, monochrome1=True))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert ds.PresentationLUTShape == "INVERSE"
    assert ds.PixelIntensityRelationshipSign == 1
    np.testing.assert_array_equal(ds.pixel_array.astype(np.float64), 4095 - mono2)
    assert image.opacities == generate_radiograph(small(seed=6, opacities=1))[0].opacities


# --------------------------------------------------------------------------- anatomy


@pytest.mark.parametrize("seed", [0, 13])
def test_air_lungs_mediastinum_and_heart(seed: int) -> None:
    _, img = pixels(small(seed=seed))
    top = 4095.0
    # direct exposure beside the neck at the top corners: black
    assert img[:8, :8].mean() < 0.05 * top and img[:8, -8:].mean() < 0.05 * top
    # across the mid chest: dark lungs on both sides of a bright mediastinum
    row = img[110]
    left, centre, right = row[60:100].mean(), row[124:132].mean(), row[156:196].mean()
    assert centre > left + 0.15 * top and centre > right + 0.15 * top
    # the heart bulges to the image right (the patient's left): fewer lung pixels there
    lower = img[150:175]
    dark = lower < 0.55 * top
    assert dark[:, 128:].sum() < dark[:, :128].sum()
    # below the diaphragm the upper abdomen is soft tissue, brighter than the lungs
    assert img[225:245, 60:100].mean() > left + 0.1 * top


# --------------------------------------------------------------------------- opacities


@pytest.fixture(scope="module")
def twins() -> tuple[SyntheticRadiograph, np.ndarray, np.ndarray]:
    """A radiograph with three opacities and the same patient without them."""
    spec = small(seed=21, opacities=3, size=512)
    image, with_opacities = pixels(spec)
    _, without = pixels(replace(spec, opacities=0))
    return image, with_opacities, without


def test_opacities_change_pixels_only_where_they_are(
    twins: tuple[SyntheticRadiograph, np.ndarray, np.ndarray],
) -> None:
    image, with_opacities, without = twins
    spacing = image.spec.pixel_spacing_mm
    assert len(image.opacities) == 3 and image.label == OPACITY
    size = (int(with_opacities.shape[0]), int(with_opacities.shape[1]))
    near = np.zeros(size, dtype=bool)
    for opacity in image.opacities:
        near |= disc(size, opacity.center_px, opacity.radius_px(spacing) + 1.0)
    changed = with_opacities != without
    assert changed.any()
    assert not (changed & ~near).any()


def test_opacities_are_brighter_blobs_inside_lung(
    twins: tuple[SyntheticRadiograph, np.ndarray, np.ndarray],
) -> None:
    image, with_opacities, without = twins
    spacing = image.spec.pixel_spacing_mm
    top = 4095.0
    centre_column = with_opacities.shape[1] // 2
    for opacity in image.opacities:
        radius = opacity.radius_px(spacing)
        core = disc(with_opacities.shape, opacity.center_px, 0.5 * radius)
        raised = (with_opacities - without)[core].mean()
        assert raised > 0.6 * opacity.contrast / 1.45 * top
        # the place is lung: darker than the mediastinum on the same rows
        rows = slice(round(opacity.center_px[0] - radius), round(opacity.center_px[0] + radius))
        mediastinum = np.median(without[rows, centre_column - 3 : centre_column + 4])
        assert np.median(without[core]) < mediastinum - 0.15 * top
        assert 2.0 <= opacity.radius_mm <= 24.0


def test_opacities_do_not_overlap_and_vary() -> None:
    found: list[Opacity] = []
    for seed in range(6):
        image = generate_radiograph(small(seed=seed, opacities=4))[0]
        for a in image.opacities:
            for b in image.opacities:
                if a is not b:
                    gap = math.dist(a.center_px, b.center_px) * image.spec.pixel_spacing_mm
                    assert gap >= a.radius_mm + b.radius_mm
        found.extend(image.opacities)
    radii = [o.radius_mm for o in found]
    contrasts = [o.contrast for o in found]
    assert max(radii) - min(radii) > 8.0
    assert max(contrasts) - min(contrasts) > 0.1


def test_no_opacities_is_the_negative_label() -> None:
    image = generate_radiograph(small(seed=4))[0]
    assert image.opacities == () and image.label == NO_OPACITY


@pytest.mark.parametrize(
    "changes",
    [
        {"seed": -1},
        {"opacities": -1},
        {"opacities": 99},
        {"size": 8},
        {"size": 100_000},
        {"bits": 8},
        {"bits": 17},
        {"sop_class": "mg"},
        {"detector_mm": float("nan")},
    ],
)
def test_invalid_spec_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        XraySpec(**changes)


# --------------------------------------------------------------------------- files


def test_write_radiographs_and_truth(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    spec = small(seed=30, opacities=1)
    images, paths = write_radiographs(
        spec, tmp_path / "out", count=3, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert [p.name for p in paths] == ["XR000001.dcm", "XR000002.dcm", "XR000003.dcm"]
    truth = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert XraySpec(**truth["spec"]) == spec
    assert truth["pixel_spacing_mm"] == spec.pixel_spacing_mm
    assert [entry["seed"] for entry in truth["images"]] == [30, 31, 32]
    for entry, image, path in zip(truth["images"], images, paths, strict=True):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert entry["file"] == path.name
        assert entry["sop_instance_uid"] == ds.SOPInstanceUID == image.sop_instance_uid
        assert entry["study_instance_uid"] == ds.StudyInstanceUID
        assert entry["label"] == OPACITY
        [opacity] = image.opacities
        [recorded] = entry["opacities"]
        assert (recorded["center_px"]["row"], recorded["center_px"]["column"]) == opacity.center_px
        assert recorded["radius_mm"] == opacity.radius_mm
        assert math.isclose(
            recorded["radius_px"], opacity.radius_mm / spec.pixel_spacing_mm, abs_tol=1e-3
        )
    assert len({entry["patient_id"] for entry in truth["images"]}) == 3


def test_cli_writes_radiographs(tmp_path: Path) -> None:
    out = tmp_path / "xr"
    args = ["synth", "xray", "--out", str(out), "--opacities", "2", "--seed", "7"]
    result = subprocess.run(
        [
            *RADNODE,
            *args,
            "--count",
            "2",
            "--size",
            "128",
            "--sop-class",
            "cr",
            "--monochrome1",
            "--bits",
            "14",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 CR chest radiographs" in result.stdout
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert (ds.Modality, ds.PhotometricInterpretation, ds.BitsStored) == ("CR", "MONOCHROME1", 14)
    truth = json.loads((out / "truth.json").read_text())
    assert [len(entry["opacities"]) for entry in truth["images"]] == [2, 2]
    refused = subprocess.run(
        [*RADNODE, "synth", "xray", "--out", str(tmp_path / "bad"), "--bits", "20"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert refused.returncode == 2 and "bits" in refused.stderr
