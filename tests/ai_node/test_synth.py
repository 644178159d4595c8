"""Tests for ai_node.synth: determinism, DICOM conformance, anatomy, lesions, laziness."""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ai_node.synth import REGIONS, Lesion, StudySpec, generate_study, write_study

# A 358 mm field of view at low resolution: realistic anatomy, small arrays.
SMALL = StudySpec(rows=128, columns=128, pixel_spacing_mm=2.8, slices=10)
# Finer sampling for lesion tests so 3 mm nodules cover several pixels.
FINE = StudySpec(rows=256, columns=256, pixel_spacing_mm=1.4, slices=24)


def small(**changes: Any) -> StudySpec:
    return replace(SMALL, **changes)


def fine(**changes: Any) -> StudySpec:
    return replace(FINE, **changes)


UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def hu(ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): stored value to Hounsfield units."""
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def pixel_of(ds: pydicom.Dataset, x: float, y: float) -> tuple[int, int]:
    """(row, column) of the pixel nearest patient point (x, y) on an axial slice."""
    ipp = [float(v) for v in ds.ImagePositionPatient]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return round((y - ipp[1]) / row_spacing), round((x - ipp[0]) / col_spacing)


def all_slices(spec: StudySpec) -> list[pydicom.Dataset]:
    return list(generate_study(spec)[1])


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_pixels_and_uids() -> None:
    spec = small(region="chest", nodules=2, seed=42)
    study_a, it_a = generate_study(spec)
    study_b, it_b = generate_study(spec)
    assert study_a == study_b
    for a, b in zip(it_a, it_b, strict=True):
        assert a.PixelData == b.PixelData
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.StudyInstanceUID == b.StudyInstanceUID
        assert a.ContentTime == b.ContentTime


def test_other_seed_gives_other_uids_and_pixels() -> None:
    study_a, it_a = generate_study(small(seed=1))
    study_b, it_b = generate_study(small(seed=2))
    assert study_a.study_instance_uid != study_b.study_instance_uid
    assert study_a.series_instance_uid != study_b.series_instance_uid
    assert not set(study_a.sop_instance_uids) & set(study_b.sop_instance_uids)
    assert study_a.patient_id != study_b.patient_id
    assert next(it_a).PixelData != next(it_b).PixelData


def test_uids_are_valid_and_unique() -> None:
    study, _ = generate_study(small(region="head", seed=7))
    uids = [study.study_instance_uid, study.series_instance_uid, *study.sop_instance_uids]
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert len(uid) <= 64
        assert UID_RE.match(uid), uid


def test_seed_changes_body_size() -> None:
    def body_pixels(seed: int) -> int:
        ds = next(generate_study(small(region="abdomen", seed=seed))[1])
        return int((hu(ds) > -500).sum())

    sizes = {body_pixels(seed) for seed in range(4)}
    assert len(sizes) == 4


# --------------------------------------------------------------------------- written files


@pytest.fixture(scope="module")
def chest_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudySpec, list[Path]]:
    out = tmp_path_factory.mktemp("chest")
    spec = small(region="chest", nodules=1, seed=5)
    _, files = write_study(spec, out)
    return out, spec, files


def test_files_are_part10_explicit_little_endian(
    chest_dir: tuple[Path, StudySpec, list[Path]],
) -> None:
    out, spec, files = chest_dir
    assert [f.name for f in files] == [f"IM{i:06d}.dcm" for i in range(1, spec.slices + 1)]
    assert sorted(p.name for p in out.glob("*.dcm")) == [f.name for f in files]
    raw = files[0].read_bytes()
    assert raw[:128] == b"\x00" * 128
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_written_file_has_ct_image_iod_attributes(
    chest_dir: tuple[Path, StudySpec, list[Path]],
) -> None:
    _, spec, files = chest_dir
    ds = pydicom.dcmread(files[3])
    required = [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "PatientPosition",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "Manufacturer",
        "InstanceNumber",
        "ContentDate",
        "ContentTime",
        "AcquisitionNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "SliceThickness",
        "PixelSpacing",
        "ImageType",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "KVP",
        "WindowCenter",
        "WindowWidth",
        "SOPClassUID",
        "SOPInstanceUID",
        "PixelData",
    ]
    missing = [kw for kw in required if kw not in ds]
    assert not missing
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.Modality == "CT"
    assert ds.BodyPartExamined == "CHEST"
    assert ds.Manufacturer == "radnode synth"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.PatientPosition == "HFS"
    assert ds.PatientID == "SYN000005"
    assert str(ds.PatientName) == "Synthetic^Patient5"
    assert ds.PatientSex in ("F", "M")
    assert re.fullmatch(r"\d{8}", ds.PatientBirthDate)
    assert ds.SamplesPerPixel == 1
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.Rows, ds.Columns) == (spec.rows, spec.columns)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
        16,
        16,
        15,
        1,
    )
    assert float(ds.RescaleSlope) == 1.0
    assert float(ds.RescaleIntercept) in (0.0, -1024.0)
    assert ds.RescaleType == "HU"
    assert [float(v) for v in ds.PixelSpacing] == [spec.pixel_spacing_mm] * 2
    assert float(ds.SliceThickness) == spec.slice_thickness_mm
    assert float(ds.WindowCenter) < -300  # lung window
    assert float(ds.WindowWidth) >= 1000
    assert ds.InstanceNumber == 4
    assert ds.pixel_array.dtype == np.int16
    assert ds.pixel_array.shape == (spec.rows, spec.columns)


def test_hu_air_in_corner_and_lung_in_lungs(chest_dir: tuple[Path, StudySpec, list[Path]]) -> None:
    _, spec, files = chest_dir
    ds = pydicom.dcmread(files[spec.slices // 2])
    img = hu(ds)
    corner = img[:6, :6]
    assert abs(float(corner.mean()) + 1000.0) < 30.0
    row = spec.rows // 2
    for col in (round(spec.columns * 0.31), round(spec.columns * 0.69)):
        patch = img[row - 2 : row + 3, col - 2 : col + 3]
        assert -950.0 < float(np.median(patch)) < -750.0
    # Under the lungs' apex-to-base profile the lung area changes along z.
    areas = [
        int(((hu(pydicom.dcmread(f)) > -950) & (hu(pydicom.dcmread(f)) < -700)).sum())
        for f in (files[0], files[spec.slices // 2])
    ]
    assert areas[0] < areas[1]


def test_truth_json(chest_dir: tuple[Path, StudySpec, list[Path]]) -> None:
    out, spec, files = chest_dir
    truth = json.loads((out / "truth.json").read_text())
    study, _ = generate_study(spec)
    assert truth["region"] == "chest"
    assert truth["study_instance_uid"] == study.study_instance_uid
    assert truth["series_instance_uid"] == study.series_instance_uid
    assert truth["patient_id"] == study.patient_id
    assert truth["sop_instance_uids"] == list(study.sop_instance_uids)
    assert truth["files"] == [f.name for f in files]
    assert StudySpec(**truth["spec"]) == spec
    assert len(truth["lesions"]) == 1
    lesion = truth["lesions"][0]
    assert (
        Lesion(tuple(lesion["center_mm"]), lesion["radius_mm"], tuple(lesion["slice_indices"]))
        == study.lesions[0]
    )
    for path, uid in zip(files, truth["sop_instance_uids"], strict=True):
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == uid


def test_progress_called_after_each_slice(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    spec = StudySpec(region="head", slices=4, rows=32, columns=32, pixel_spacing_mm=8.0)
    write_study(spec, tmp_path / "nested" / "out", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert (tmp_path / "nested" / "out" / "truth.json").is_file()


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("region", REGIONS)
def test_slice_positions_are_consistent(region: str) -> None:
    spec = small(region=region, seed=3, slice_thickness_mm=1.25)
    slices = all_slices(spec)
    assert [ds.InstanceNumber for ds in slices] == list(range(1, spec.slices + 1))
    ipps = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    assert np.allclose(ipps[:, :2], ipps[0, :2])
    steps = np.diff(ipps[:, 2])
    assert np.all(steps < 0) or np.all(steps > 0)
    assert np.allclose(np.abs(steps), spec.slice_thickness_mm)
    assert np.allclose([float(ds.SliceLocation) for ds in slices], ipps[:, 2])
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == spec.slices
    # The image is centred on the table axis.
    assert math.isclose(ipps[0, 0], -(spec.columns - 1) * spec.pixel_spacing_mm / 2, abs_tol=1e-3)


# --------------------------------------------------------------------------- regions


def _fractions(region: str, seed: int) -> dict[str, float]:
    spec = small(region=region, seed=seed)
    img = np.stack([hu(ds) for ds in all_slices(spec)])
    return {
        "air": float((img < -950).mean()),
        "lung": float(((img > -950) & (img < -700)).mean()),
        "fat": float(((img > -150) & (img < -60)).mean()),
        "bone": float((img > 500).mean()),
    }


@pytest.mark.parametrize("seed", [0, 11])
def test_regions_are_distinct(seed: int) -> None:
    chest, head, abdomen = (_fractions(r, seed) for r in ("chest", "head", "abdomen"))
    assert chest["lung"] > 0.08
    assert head["lung"] < 0.01 and abdomen["lung"] < 0.02
    assert head["fat"] < 0.02 < abdomen["fat"]
    assert abdomen["fat"] > 2 * chest["fat"]
    assert head["bone"] > 2 * max(chest["bone"], abdomen["bone"])


@pytest.mark.parametrize(
    ("region", "part", "center", "width"),
    [("chest", "CHEST", -600, 1500), ("head", "HEAD", 40, 80), ("abdomen", "ABDOMEN", 40, 400)],
)
def test_region_header(region: str, part: str, center: float, width: float) -> None:
    ds = next(generate_study(small(region=region))[1])
    assert ds.BodyPartExamined == part
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (center, width)


def test_head_has_skull_ring_and_brain() -> None:
    spec = small(region="head", seed=4)
    ds = all_slices(spec)[spec.slices // 2]
    img = hu(ds)
    row = img[spec.rows // 2]
    bone_cols = np.nonzero(row > 500)[0]
    assert bone_cols.size >= 2
    left, right = bone_cols.min(), bone_cols.max()
    assert right - left > spec.columns // 3
    centre = img[
        spec.rows // 2 - 3 : spec.rows // 2 + 4, spec.columns // 2 - 3 : spec.columns // 2 + 4
    ]
    assert -20.0 < float(np.median(centre)) < 60.0


# --------------------------------------------------------------------------- nodules


@pytest.fixture(scope="module")
def nodule_study() -> tuple[StudySpec, tuple[Lesion, ...], list[pydicom.Dataset]]:
    spec = fine(region="chest", nodules=3, seed=9)
    study, it = generate_study(spec)
    return spec, study.lesions, list(it)


def test_nodules_are_soft_tissue_inside_air_like_lung(
    nodule_study: tuple[StudySpec, tuple[Lesion, ...], list[pydicom.Dataset]],
) -> None:
    _, lesions, slices = nodule_study
    assert len(lesions) == 3
    for lesion in lesions:
        x, y, z = lesion.center_mm
        assert 3.0 <= lesion.radius_mm <= 15.0
        zs = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
        index = int(np.argmin(np.abs(zs - z)))
        assert index in lesion.slice_indices
        ds = slices[index]
        img = hu(ds)
        r, c = pixel_of(ds, x, y)
        cross = [img[r, c], img[r - 1, c], img[r + 1, c], img[r, c - 1], img[r, c + 1]]
        assert -60.0 < float(np.median(cross)) < 150.0
        rho = math.sqrt(lesion.radius_mm**2 - (zs[index] - z) ** 2)
        ring = []
        for k in range(24):
            angle = 2 * math.pi * k / 24
            rr, cc = pixel_of(
                ds, x + (rho + 4.0) * math.cos(angle), y + (rho + 4.0) * math.sin(angle)
            )
            ring.append(img[rr, cc])
        assert float(np.median(ring)) < -700.0


def test_nodule_slice_indices_match_geometry_and_pixels(
    nodule_study: tuple[StudySpec, tuple[Lesion, ...], list[pydicom.Dataset]],
) -> None:
    spec, lesions, slices = nodule_study
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    for lesion in lesions:
        expected = tuple(
            int(i) for i in np.nonzero(np.abs(zs - lesion.center_mm[2]) < lesion.radius_mm)[0]
        )
        assert lesion.slice_indices == expected
        assert lesion.slice_indices == tuple(range(expected[0], expected[-1] + 1))
    # Same patient without nodules: the pixels differ exactly where the lesions are.
    plain = all_slices(fine(region="chest", nodules=0, seed=9))
    touched = set().union(*(lesion.slice_indices for lesion in lesions))
    for index, (with_n, without) in enumerate(zip(slices, plain, strict=True)):
        diff = np.argwhere(with_n.pixel_array != without.pixel_array)
        if index not in touched:
            assert diff.size == 0, index
            continue
        assert diff.size > 0, index
        ipp = [float(v) for v in with_n.ImagePositionPatient]
        xs = ipp[0] + diff[:, 1] * spec.pixel_spacing_mm
        ys = ipp[1] + diff[:, 0] * spec.pixel_spacing_mm
        near = np.zeros(len(diff), dtype=bool)
        for lesion in lesions:
            if index in lesion.slice_indices:
                cx, cy, _ = lesion.center_mm
                near |= np.hypot(xs - cx, ys - cy) <= lesion.radius_mm + spec.pixel_spacing_mm
        assert near.all(), index
        # Every slice a lesion cuts shows it at the pixel nearest its centre.
        for lesion in lesions:
            if index in lesion.slice_indices:
                r, c = pixel_of(with_n, lesion.center_mm[0], lesion.center_mm[1])
                assert hu(with_n)[r, c] > -300.0


def test_nodules_are_deterministic_and_seed_dependent() -> None:
    a = generate_study(small(region="chest", nodules=4, seed=1))[0].lesions
    b = generate_study(small(region="chest", nodules=4, seed=1))[0].lesions
    c = generate_study(small(region="chest", nodules=4, seed=2))[0].lesions
    assert a == b
    assert [le.center_mm for le in a] != [le.center_mm for le in c]
    assert len({le.radius_mm for le in a + c}) > 1


@pytest.mark.parametrize("region", ["head", "abdomen"])
def test_nodules_outside_chest_are_refused(region: str) -> None:
    with pytest.raises(ValueError, match="nodules"):
        StudySpec(region=region, nodules=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"region": "knee"},
        {"slices": 0},
        {"nodules": -1},
        {"seed": -5},
        {"rows": 100_000},
        {"columns": 4},
        {"pixel_spacing_mm": 0.0},
        {"slice_thickness_mm": float("nan")},
    ],
)
def test_invalid_spec_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        StudySpec(**kwargs)  # type: ignore[arg-type]


def test_explicit_patient_identity_is_used() -> None:
    spec = small(patient_id="P-77", patient_name="Doe^Jane")
    study, it = generate_study(spec)
    ds = next(it)
    assert study.patient_id == "P-77" == ds.PatientID
    assert str(ds.PatientName) == "Doe^Jane"


# --------------------------------------------------------------------------- laziness and size


def test_iterator_is_lazy_on_a_large_spec() -> None:
    spec = StudySpec(region="chest", slices=300, nodules=2, seed=1)
    tracemalloc.start()
    try:
        study, it = generate_study(spec)
        assert isinstance(it, Iterator)
        first = next(it)
        second = next(it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 300 int16 slices of 512x512 would be 150 MiB; two slices and scratch are a few MiB.
    assert peak < 32 * 2**20
    assert len(study.sop_instance_uids) == 300
    assert first.InstanceNumber == 1 and second.InstanceNumber == 2
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SOPInstanceUID == study.sop_instance_uids[0]


@pytest.mark.slow
def test_full_size_study_writes_completely(tmp_path: Path) -> None:
    """Sanity check of the benchmark size (not timed): 300 slices of 512x512."""
    calls: list[tuple[int, int]] = []
    spec = StudySpec(region="chest", slices=300, nodules=5, seed=2024)
    study, files = write_study(spec, tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert len(files) == 300 and calls[-1] == (300, 300)
    last = pydicom.dcmread(files[-1])
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert last.SOPInstanceUID == study.sop_instance_uids[-1]
    assert last.pixel_array.shape == (512, 512)
    span = abs(float(last.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]))
    assert math.isclose(span, 299 * spec.slice_thickness_mm, abs_tol=1e-3)
    assert len(study.lesions) == 5
    assert all(lesion.slice_indices for lesion in study.lesions)
