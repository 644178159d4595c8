"""Rendered images through the VOI LUT (PS3.3 C.11.2): a VOI LUT Sequence, the VOI LUT
Functions LINEAR, LINEAR_EXACT and SIGMOID from the dataset and from the ``window``
parameter (PS3.18 8.3.5.1.3), against pydicom's own VOI LUT functions on pydicom's test
files, by function and over WADO-RS ``/rendered``."""

from __future__ import annotations

import copy
from io import BytesIO

import httpx
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from dicomweb.render import RenderError, parse_window, render
from tests.support.dicom_bytes import pydicom_test_file
from tests.support.dicomweb_studies import dicomweb_url
from tests.support.radnode_process import RadnodeProcess

VOI_LUT_FILE = "vlut_04.dcm"  # 8-bit secondary capture with a 256-entry, 16-bit VOI LUT
MR_FILE = "MR_small.dcm"  # 16-bit signed MR, Window Center 600 / Width 1600, no rescale
MR_OUTPUT_RANGE = (-(2**15), 2**15 - 1)
"""pydicom's windowing output range for MR_small: its stored values' range (signed, 16 bits)."""
PIXEL = (32, 32)
"""An MR_small pixel of value 182: a window of width 4 centred there puts it mid-ramp."""


def eight_bit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """pydicom's VOI output, ranging ``low``..``high``, as the gray levels render.py writes."""
    scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def pydicom_voi(ds: Dataset) -> np.ndarray:
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


def with_window(ds: Dataset, center: float, width: float, function: str) -> Dataset:
    out = copy.deepcopy(ds)
    out.WindowCenter, out.WindowWidth, out.VOILUTFunction = center, width, function
    return out


def new_instance(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def gamma_lut(ds: Dataset) -> Dataset:
    """``ds`` (vlut_04) with a non-linear 12-bit VOI LUT starting at input value 40."""
    out = new_instance(ds)
    item = out.VOILUTSequence[0]
    item.LUTDescriptor = [200, 40, 12]
    item.LUTData = [round(4095 * (i / 199) ** 0.5) for i in range(200)]
    return out


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(data)))


def rendered(ds: Dataset, window: str | None = None) -> np.ndarray:
    png = render(ds, 1, window=parse_window(window), viewport=None, media_type="image/png")
    return png_pixels(png)


# -- the function ------------------------------------------------------------------------


def test_voi_lut_sequence_as_pydicom_applies_it() -> None:
    ds = dcmread(pydicom_test_file(VOI_LUT_FILE))
    assert np.array_equal(rendered(ds), eight_bit(pydicom_voi(ds), 0, 2**16 - 1))

    curved = gamma_lut(ds)
    expected = eight_bit(pydicom_voi(curved), 0, 2**12 - 1)
    got = rendered(curved)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, rendered(ds))
    assert (got[ds.pixel_array <= 40] == 0).all()  # below the table: its first entry


def test_eight_bit_voi_lut_longer_than_256_entries() -> None:
    """An 8-bit table of 4096 entries over 16-bit values: each value is looked up as is
    (pydicom 3.0's apply_voi indexes such a table modulo 256)."""
    ds = dcmread(pydicom_test_file(MR_FILE))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    table = np.arange(4096) // 16
    item.LUTData = [int(v) for v in table]
    ds.VOILUTSequence = [item]
    expected = table[np.clip(ds.pixel_array, 0, 4095)].astype(np.uint8)
    assert np.array_equal(rendered(ds), expected)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dataset_voi_lut_function_as_pydicom_applies_it(function: str) -> None:
    ds = dcmread(pydicom_test_file(MR_FILE))
    ds.VOILUTFunction = function
    assert np.array_equal(rendered(ds), eight_bit(pydicom_voi(ds), *MR_OUTPUT_RANGE))


@pytest.mark.parametrize(
    ("parameter", "function"),
    [("linear", "LINEAR"), ("linear-exact", "LINEAR_EXACT"), ("sigmoid", "SIGMOID")],
)
def test_window_parameter_function_as_pydicom_applies_it(parameter: str, function: str) -> None:
    ds = dcmread(pydicom_test_file(MR_FILE))
    value = int(ds.pixel_array[PIXEL])
    expected = eight_bit(pydicom_voi(with_window(ds, value, 4, function)), *MR_OUTPUT_RANGE)
    assert np.array_equal(rendered(ds, f"{value},4,{parameter}"), expected)


def test_linear_exact_is_not_linear() -> None:
    ds = dcmread(pydicom_test_file(MR_FILE))
    value = int(ds.pixel_array[PIXEL])
    linear = rendered(ds, f"{value},4,linear")
    exact = rendered(ds, f"{value},4,linear-exact")
    # LINEAR: ((0 + 0.5) / 3 + 0.5) * 255 = 170; LINEAR_EXACT: (0 / 4 + 0.5) * 255 = 127.5
    assert (int(linear[PIXEL]), int(exact[PIXEL])) == (170, 128)


def test_sigmoid_follows_its_formula() -> None:
    ds = dcmread(pydicom_test_file(MR_FILE))
    values = ds.pixel_array.astype(np.float64)
    expected = 255.0 / (1.0 + np.exp(-4.0 * (values - 600) / 1600))
    assert np.array_equal(rendered(ds, "600,1600,sigmoid"), np.rint(expected).astype(np.uint8))


@pytest.mark.parametrize("window", ["600", "600,0.5", "600,0.5,linear", "600,10,cubic", "a,b"])
def test_window_parameter_refused(window: str) -> None:
    with pytest.raises(RenderError):
        parse_window(window)
    assert parse_window("600,0.5,linear-exact") is not None  # only LINEAR needs width >= 1


# -- over WADO-RS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(api: RadnodeProcess) -> dict[str, Dataset]:
    """The VOI LUT file, its variant with a curved table, MR_small and MR_small whose
    dataset asks for a SIGMOID window, stored with STOW-RS."""
    lut = dcmread(pydicom_test_file(VOI_LUT_FILE))
    mr = dcmread(pydicom_test_file(MR_FILE))
    sigmoid = new_instance(mr)
    sigmoid.VOILUTFunction = "SIGMOID"
    datasets = {"lut": lut, "gamma": gamma_lut(lut), "mr": mr, "sigmoid": sigmoid}
    answer = DICOMwebClient(dicomweb_url(api)).store_instances(list(datasets.values()))
    assert "FailedSOPSequence" not in answer, answer
    return datasets


def fetch(api: RadnodeProcess, ds: Dataset, window: str | None = None) -> np.ndarray:
    url = (
        f"{dicomweb_url(api)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )
    response = httpx.get(
        url, params={"window": window} if window else None, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200, response.text
    return png_pixels(response.content)


def test_rendered_route_voi_lut_sequence(api: RadnodeProcess, stored: dict[str, Dataset]) -> None:
    lut, gamma = stored["lut"], stored["gamma"]
    assert np.array_equal(fetch(api, lut), eight_bit(pydicom_voi(lut), 0, 2**16 - 1))
    assert np.array_equal(fetch(api, gamma), eight_bit(pydicom_voi(gamma), 0, 2**12 - 1))


def test_rendered_route_window_functions(api: RadnodeProcess, stored: dict[str, Dataset]) -> None:
    mr, sigmoid = stored["mr"], stored["sigmoid"]
    value = int(mr.pixel_array[PIXEL])
    linear = fetch(api, mr, f"{value},4,linear")
    exact = fetch(api, mr, f"{value},4,linear-exact")
    assert int(linear[PIXEL]) - int(exact[PIXEL]) >= 1
    expected = eight_bit(pydicom_voi(with_window(mr, value, 4, "LINEAR_EXACT")), *MR_OUTPUT_RANGE)
    assert np.array_equal(exact, expected)

    from_dataset = fetch(api, sigmoid)
    assert np.array_equal(from_dataset, eight_bit(pydicom_voi(sigmoid), *MR_OUTPUT_RANGE))
    assert np.array_equal(fetch(api, mr, "600,1600,sigmoid"), from_dataset)
    assert not np.array_equal(fetch(api, mr), from_dataset)  # the dataset's LINEAR window
