"""Preprocessing: series selection, decoding (compressed, multi-frame, unsigned), HU, windows."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, RLELossless

from ai_node.preprocess import (
    INPUT_SIZE,
    LUNG_WINDOW,
    InputError,
    area_resize,
    frames_of_dataset,
    load_datasets,
    load_series,
    model_input,
    select_series,
    windowed,
)
from ai_node.synth import StudySpec, generate_study, write_study


def slices(n: int = 4, size: int = 128, **kw) -> list[Dataset]:
    _, it = generate_study(
        StudySpec(region="chest", slices=n, seed=3, rows=size, columns=size, **kw)
    )
    return list(it)


def hu_of(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_area_resize_is_block_mean_and_keeps_aspect() -> None:
    img = np.arange(512 * 512, dtype=np.int16).reshape(512, 512) % 1000
    out = area_resize(img)
    assert out.shape == (INPUT_SIZE, INPUT_SIZE) and out.dtype == np.float32
    assert out[3, 5] == pytest.approx(img[12:16, 20:24].mean())
    odd = area_resize(np.ones((300, 200), dtype=np.uint16))  # padded to square with its min
    assert odd.shape == (INPUT_SIZE, INPUT_SIZE)
    assert area_resize(np.ones((64, 64), dtype=np.int16)).shape == (INPUT_SIZE, INPUT_SIZE)


def test_hu_from_rescale_and_head_to_feet_order() -> None:
    datasets = slices(4, 128)
    stack = load_datasets(reversed(datasets))  # given feet first, comes back head first
    assert [r.sop_instance_uid for r in stack.refs] == [d.SOPInstanceUID for d in datasets]
    assert np.allclose(stack.hu[0], hu_of(datasets[0]))
    assert stack.hu.min() >= -1024 and stack.hu.max() < 3100


def test_missing_optional_tags_mean_identity_rescale_and_instance_order() -> None:
    datasets = slices(3, 128)
    for ds in datasets:
        for kw in (
            "RescaleSlope",
            "RescaleIntercept",
            "ImagePositionPatient",
            "ImageOrientationPatient",
        ):
            delattr(ds, kw)
    stack = load_datasets(reversed(datasets))
    assert [r.sop_instance_uid for r in stack.refs] == [d.SOPInstanceUID for d in datasets]
    assert np.allclose(stack.hu[0], datasets[0].pixel_array)


def test_unsigned_16_bit_gives_the_same_hu() -> None:
    ds = slices(1, 128)[0]
    unsigned = copy.deepcopy(ds)
    unsigned.PixelRepresentation = 0
    unsigned.PixelData = ds.pixel_array.astype(np.uint16).tobytes()
    assert np.allclose(frames_of_dataset(unsigned)[0].grid, frames_of_dataset(ds)[0].grid)


def test_rle_compressed_gives_the_same_hu() -> None:
    ds = slices(1, 128)[0]
    plain = frames_of_dataset(ds)[0].grid
    ds.compress(RLELossless)
    assert np.array_equal(frames_of_dataset(ds)[0].grid, plain)


def _enhanced(datasets: list[Dataset]) -> Dataset:
    """A minimal multi-frame Enhanced CT object built from single-frame slices."""
    mf = Dataset()
    first = datasets[0]
    for kw in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        setattr(mf, kw, first.get(kw))
    mf.SOPClassUID = EnhancedCTImageStorage
    mf.SOPInstanceUID = pydicom.uid.generate_uid()
    mf.NumberOfFrames = len(datasets)
    shared = Dataset()
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    mf.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    # frames stored feet first: the position, not the frame order, decides
    for ds in reversed(datasets):
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = ds.ImagePositionPatient
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    mf.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    mf.PixelData = b"".join(ds.pixel_array.tobytes() for ds in reversed(datasets))
    mf.file_meta = pydicom.dataset.FileMetaDataset()
    mf.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return mf


def test_multi_frame_enhanced_ct() -> None:
    datasets = slices(3, 128)
    frames = frames_of_dataset(_enhanced(datasets))
    assert [f.ref.frame_number for f in frames] == [1, 2, 3]
    stack = load_datasets([_enhanced(datasets)])
    assert [r.frame_number for r in stack.refs] == [3, 2, 1]
    assert np.allclose(stack.hu[0], hu_of(datasets[0]))


def test_windows_and_per_slice_normalisation() -> None:
    hu = np.array([[[-2000.0, -600.0], [150.0, 3000.0]]], dtype=np.float32)
    assert windowed(hu, LUNG_WINDOW).tolist() == [[[0.0, 0.5], [1.0, 1.0]]]
    x = model_input(np.random.default_rng(0).normal(0, 300, (2, 8, 8)).astype(np.float32), "lung")
    assert x.shape == (2, 8, 8, 1)
    assert np.allclose(x.reshape(2, -1).mean(axis=1), 0, atol=1e-5)


def test_select_series_prefers_the_axial_ct_series_with_most_slices(tmp_path) -> None:
    headers: dict[str, Dataset] = {}

    def rows(
        series: str, n: int, sop_class: str, image_type=("ORIGINAL", "PRIMARY", "AXIAL")
    ) -> list[dict]:
        ds = Dataset()
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        headers[f"{series}/0"] = ds
        return [
            {"series_uid": series, "sop_class_uid": sop_class, "path": f"{series}/{i}"}
            for i in range(n)
        ]

    ct = "1.2.840.10008.5.1.4.1.1.2"
    instances = (
        rows("small", 10, ct)
        + rows("big", 40, ct)
        + rows("scout", 90, ct, ("ORIGINAL", "PRIMARY", "LOCALIZER"))
        + rows("sr", 95, "1.2.840.10008.5.1.4.1.1.88.34")
        + rows("sc", 99, "1.2.840.10008.5.1.4.1.1.7")
    )
    choice = select_series(instances, lambda p: headers[p])
    assert choice is not None and choice.series_uid == "big" and choice.n_frames == 40
    assert select_series(rows("sc2", 3, "1.2.840.10008.5.1.4.1.1.7"), lambda p: headers[p]) is None


def test_load_series_reports_corrupt_files(tmp_path) -> None:
    _, files = write_study(
        StudySpec(region="chest", slices=4, seed=2, rows=64, columns=64), tmp_path
    )
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: len(raw) - 3000])  # pixel data cut short
    stack = load_series(files, workers=2)
    assert len(stack) == 3 and "IM000002.dcm" in stack.skipped[0]
    for f in files:
        f.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="could not be decoded"):
        load_series(files)
