"""Tests for ai_node.xray_preprocess: a CR/DX image to a model input."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pydicom
import pytest

from ai_node.card import IMAGENET_MEAN, IMAGENET_STD
from ai_node.preprocess import InputError
from ai_node.xray_preprocess import (
    area_resize,
    detector_spacing_mm,
    image_input,
    image_input_of,
    radiograph_input,
    stored_pixels,
)
from ai_node.xray_synth import XraySpec, generate_radiograph

SPEC = XraySpec(seed=11, opacities=2, size=512)


def dataset(**changes: Any) -> pydicom.Dataset:
    return generate_radiograph(replace(SPEC, **changes))[1]


def with_pixels(ds: pydicom.Dataset, values: np.ndarray, **attributes: Any) -> pydicom.Dataset:
    out = copy.deepcopy(ds)
    for keyword, value in attributes.items():
        setattr(out, keyword, value)
    out.Rows, out.Columns = values.shape
    out.PixelData = values.tobytes()
    return out


# --------------------------------------------------------------------------- photometric


def test_monochrome1_and_monochrome2_give_the_same_input() -> None:
    mono2 = radiograph_input(dataset())
    mono1 = radiograph_input(dataset(monochrome1=True))
    np.testing.assert_array_equal(mono1.array, mono2.array)
    percentile = image_input(scale="percentile", channels=3)
    np.testing.assert_array_equal(
        radiograph_input(dataset(monochrome1=True), percentile).array,
        radiograph_input(dataset(), percentile).array,
    )


def test_monochrome1_inverted_about_another_value_gives_the_same_input() -> None:
    """A MONOCHROME1 writer need not use the full range: only the order matters."""
    ds = dataset()
    values = ds.pixel_array.astype(np.uint16)
    inverted = (values.max() + 7 - values).astype("<u2")
    mono1 = with_pixels(ds, inverted, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(radiograph_input(mono1).array, radiograph_input(ds).array, atol=1e-5)


def test_without_inversion_monochrome1_stays_inverted() -> None:
    keep = image_input(invert_monochrome1=False)
    mono1 = radiograph_input(dataset(monochrome1=True), keep).array
    mono2 = radiograph_input(dataset(), keep).array
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-5)


@pytest.mark.parametrize("changes", [{"bits": 10}, {"bits": 16}, {"sop_class": "cr", "bits": 14}])
def test_bit_depth_and_sop_class_do_not_change_the_input(changes: dict[str, Any]) -> None:
    reference = radiograph_input(dataset()).array
    other = radiograph_input(dataset(**changes)).array
    assert np.abs(other - reference).max() < 0.01


def test_signed_pixels_and_rescale() -> None:
    ds = dataset()
    values = ds.pixel_array.astype(np.int32) - 2048
    signed = with_pixels(
        ds,
        values.astype("<i2"),
        PixelRepresentation=1,
        RescaleSlope="2.0",
        RescaleIntercept="100",
    )
    np.testing.assert_allclose(stored_pixels(signed), values * 2.0 + 100.0)
    np.testing.assert_allclose(
        radiograph_input(signed).array, radiograph_input(ds).array, atol=1e-5
    )


# --------------------------------------------------------------------------- scaling


def test_min_max_spans_zero_to_one() -> None:
    x = radiograph_input(dataset()).array
    assert x.shape == (256, 256, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)


def test_percentile_clips_the_tails() -> None:
    x = radiograph_input(dataset(), image_input(scale="percentile", percentiles=(5.0, 95.0))).array
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    assert 0.04 <= float((x <= 0.0).mean()) <= 0.07
    assert 0.04 <= float((x >= 1.0 - 1e-6).mean()) <= 0.07


def test_three_channels_and_standardisation() -> None:
    gray = radiograph_input(dataset()).array
    rgb = radiograph_input(dataset(), image_input(channels=3)).array
    assert rgb.shape == (256, 256, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray[:, :, 0])
    imagenet = radiograph_input(dataset(), image_input(channels=3, standardise="imagenet")).array
    for c in range(3):
        np.testing.assert_allclose(
            imagenet[:, :, c], (gray[:, :, 0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-5
        )
    z = radiograph_input(dataset(), image_input(size=64, standardise="per_image")).array
    # The shared standardisation divides by (std + 1e-3): unit variance to within 1e-2.
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1.0) < 1e-2


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 8},
        {"channels": 2},
        {"scale": "hu_window"},
        {"percentiles": (50.0, 10.0)},
        {"standardise": "imagenet"},
    ],
)
def test_invalid_input_declaration_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        image_input(**changes)


def test_image_input_from_a_card() -> None:
    card_input = {
        "kind": "image",
        "size": [224, 224],
        "channels": 3,
        "dtype": "float32",
        "normalisation": {
            "scale": "percentile",
            "percentiles": [0.5, 99.5],
            "standardise": "imagenet",
        },
        "invert_monochrome1": True,
    }
    assert image_input_of(card_input) == image_input(
        size=224, channels=3, scale="percentile", percentiles=(0.5, 99.5), standardise="imagenet"
    )
    with pytest.raises(ValueError):
        image_input_of({**card_input, "kind": "slice"})
    with pytest.raises(ValueError):
        image_input_of({**card_input, "size": [224, 256]})


# --------------------------------------------------------------------------- resize


def test_area_resize_integer_factor_is_the_block_mean() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1000, (64, 48))
    out = area_resize(img, 16, 12)
    np.testing.assert_allclose(out, img.reshape(16, 4, 12, 4).mean(axis=(1, 3)), rtol=1e-5)


def test_area_resize_other_factors_average_whole_pixel_bins() -> None:
    img = np.arange(5, dtype=np.float64)[None, :].repeat(3, axis=0)
    out = area_resize(img, 3, 2)  # columns split at floor(2.5) = 2: [0, 1] and [2, 3, 4]
    np.testing.assert_allclose(out[0], [0.5, 3.0])
    const = area_resize(np.full((300, 300), 7.0), 256, 256)
    np.testing.assert_allclose(const, 7.0, rtol=1e-6)
    rng = np.random.default_rng(1)
    noisy = rng.uniform(0, 1, (384, 384))
    assert float(area_resize(noisy, 256, 256).mean()) == pytest.approx(
        float(noisy.mean()), abs=0.01
    )
    small = np.arange(4, dtype=np.float64).reshape(2, 2)
    np.testing.assert_array_equal(area_resize(small, 4, 4), small.repeat(2, 0).repeat(2, 1))


def test_non_square_images_are_padded_and_mapped_back() -> None:
    ds = dataset(size=256, opacities=0)
    values = ds.pixel_array[:, 32:224].copy()  # 256 rows x 192 columns
    values[100:104, 50:54] = 4095  # a marker: 2 x 2 model pixels
    narrow = with_pixels(ds, values.astype("<u2"))
    image = radiograph_input(narrow, image_input(size=128))
    assert image.source_shape == (256, 192) and image.pad == (0, 32) and image.factor == 2.0
    assert image.array[:, :10].max() == 0.0  # the padding is the darkest value
    row, col = image.to_model_px(101.5, 51.5)
    assert (row, col) == (50.5, 41.5)
    assert image.to_source_px(row, col) == pytest.approx((101.5, 51.5))
    brightest = np.argwhere(image.array[:, :, 0] == image.array.max())
    assert brightest.tolist() == [[50, 41], [50, 42], [51, 41], [51, 42]]


# --------------------------------------------------------------------------- millimetres


def test_spacing_is_imager_pixel_spacing() -> None:
    ds = dataset()
    assert "PixelSpacing" in ds  # calibrated for the patient plane: not what we use
    assert detector_spacing_mm(ds) == (SPEC.pixel_spacing_mm, SPEC.pixel_spacing_mm)
    del ds.ImagerPixelSpacing
    assert detector_spacing_mm(ds) == tuple(float(v) for v in ds.PixelSpacing)
    del ds.PixelSpacing
    assert detector_spacing_mm(ds) is None
    with pytest.raises(InputError):
        radiograph_input(ds).mm_to_model_px(10.0)


def test_opacities_land_where_the_truth_says_on_the_model_grid() -> None:
    image, ds = generate_radiograph(SPEC)
    _, plain = generate_radiograph(replace(SPEC, opacities=0))
    with_o, without = radiograph_input(ds), radiograph_input(plain)
    assert with_o.model_spacing_mm == pytest.approx((SPEC.pixel_spacing_mm * 2,) * 2)
    diff = with_o.array[:, :, 0] - without.array[:, :, 0]
    rows, cols = np.ogrid[:256, :256]
    covered = np.zeros(diff.shape, dtype=bool)
    for opacity in image.opacities:
        r, c = with_o.to_model_px(*opacity.center_px)
        radius_rows, radius_cols = with_o.mm_to_model_px(opacity.radius_mm)
        inside = ((rows - r) / radius_rows) ** 2 + ((cols - c) / radius_cols) ** 2 <= 1.0
        core = ((rows - r) / radius_rows) ** 2 + ((cols - c) / radius_cols) ** 2 <= 0.25
        assert diff[core].mean() > 0.02
        covered |= ((rows - r) / (radius_rows + 1)) ** 2 + (
            (cols - c) / (radius_cols + 1)
        ) ** 2 <= 1
        assert inside.sum() == pytest.approx(np.pi * radius_rows * radius_cols, rel=0.15)
    # min-max rescaling shifts every pixel a little; the opacities stand well above that
    assert np.abs(diff[~covered]).max() < 0.2 * diff[covered].max()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "attributes",
    [
        {"PhotometricInterpretation": "RGB"},
        {"SamplesPerPixel": 3},
        {"NumberOfFrames": 2},
        {"BitsAllocated": 32},
        {"Rows": 9000},
        {"RescaleSlope": "0"},
    ],
)
def test_bad_images_are_input_errors(attributes: dict[str, Any]) -> None:
    ds = dataset(size=64)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    with pytest.raises(InputError):
        radiograph_input(ds)


def test_truncated_pixel_data_is_an_input_error() -> None:
    ds = dataset(size=64)
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(InputError):
        radiograph_input(ds)
