"""The upload page's server side, as plain functions: a ``.zip`` of DICOM read under caps,
a JPEG or PNG made a Secondary Capture instance, and each FailureReason said in words.

A zip is untrusted: before anything is stored its central directory is checked against
``upload_max_zip_bytes`` (the total it may expand to), ``upload_max_zip_ratio`` (how much
one member may expand) and the number of members, so a zip bomb is refused whole;
members are then read one at a time, at most the size their header declares (zipfile
stops there and checks the CRC). What is not a DICOM Part 10 file is reported and
skipped.

An image becomes, with the patient and study the uploader typed, a Digital X-Ray Image
for presentation (PS3.3 A.26.2, Modality DX) when the uploader chose DX, so the X-ray
models whose cards list that SOP class analyse it (a grey-scale image; Body Part
Examined from the form), and otherwise a Secondary Capture Image (PS3.3 A.8.1, Modality
CR or OT, Conversion Type DI: a digitized film or a photo). Both are built on highdicom
(:class:`highdicom.sc.SCImage`; the DX on :class:`highdicom.base.SOPClass`, which gives
the patient, study, series and equipment modules) and stored and analysed like any
instance.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from radnode_core import IMPLEMENTATION_VERSION_NAME
from radnode_core.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
)
from radnode_core.uids import InvalidUID, check_uid

FAILURE_REASONS: dict[int, str] = {
    OUT_OF_RESOURCES: "Out of resources: the node could not store it (too large, or its "
    "disk is full). Try again later or ask the administrator.",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data set does not match its SOP class, or its SOP "
    "Instance UID is already stored in another study or series.",
    CANNOT_UNDERSTAND: "Cannot understand: not a readable DICOM file (broken header, "
    "elements that do not decode, or pixel data of the wrong length).",
    0x0110: "Processing failure on the node.",
    0x0122: "SOP class not supported.",
    0x0124: "Refused: not authorized.",
    0xC122: "Referenced transfer syntax not supported.",
}
"""PS3.18 10.5.3.1 / PS3.4 Annex B FailureReason values, in words (the page shows these)."""

Modality = Literal["CR", "DX", "OT"]
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
_RATIO_FLOOR = 1024 * 1024  # smaller members expand too little to matter one by one


def explain(failure_reason: int) -> str:
    return FAILURE_REASONS.get(failure_reason, f"Refused (status 0x{failure_reason:04X}).")


class ZipRefused(ValueError):
    """The zip as a whole is refused (a bomb, encrypted, or not a zip): nothing is stored."""


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int
    max_ratio: float
    max_members: int
    max_member_bytes: int


@dataclass(frozen=True)
class Member:
    """One file of the zip: its bytes, or why it was skipped without being read."""

    name: str
    data: bytes | None
    skipped: str | None = None


def check_zip(zf: zipfile.ZipFile, compressed_size: int, limits: ZipLimits) -> None:
    """Refuse a zip whose directory promises too much: the caps on members, on the total
    expanded size and on the expansion ratio, of each member and of the whole."""
    files = [i for i in zf.infolist() if not i.is_dir()]
    if len(files) > limits.max_members:
        raise ZipRefused(f"more than {limits.max_members} files in the zip")
    total = 0
    for info in files:
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ZipRefused(
                f"the zip expands beyond {limits.max_total_bytes} bytes (upload_max_zip_bytes)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_FLOOR and ratio > limits.max_ratio:
            raise ZipRefused(
                f"a file in the zip expands {ratio:.0f} times, more than "
                f"{limits.max_ratio:g} (upload_max_zip_ratio): a zip bomb"
            )
    if total > _RATIO_FLOOR and total / max(compressed_size, 1) > limits.max_ratio:
        raise ZipRefused(
            f"the zip expands more than {limits.max_ratio:g} times (upload_max_zip_ratio)"
        )


def zip_members(path: Path, limits: ZipLimits) -> Iterator[Member]:
    """The files of the zip at ``path`` after :func:`check_zip`, one at a time."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ZipRefused(f"not a readable zip: {exc}") from exc
    with zf:
        check_zip(zf, path.stat().st_size, limits)
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename[-256:]
            if info.flag_bits & 0x1:
                yield Member(name, None, "encrypted: skipped")
                continue
            if info.file_size > limits.max_member_bytes:
                yield Member(name, None, "larger than max_instance_bytes: skipped")
                continue
            try:
                with zf.open(info) as f:
                    data = f.read(limits.max_member_bytes + 1)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
                yield Member(name, None, f"unreadable in the zip ({exc}): skipped")
                continue
            yield Member(name, data)


def is_part10(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


@dataclass(frozen=True)
class ImageForm:
    """What the uploader types for a JPEG or PNG; validated here and in the page."""

    patient_id: str
    patient_name: str = ""
    study_description: str = ""
    modality: Modality = "OT"
    study_uid: str | None = None
    body_part: str = ""

    def __post_init__(self) -> None:
        pid = self.patient_id.strip()
        if not pid:
            raise ValueError("patient_id: a patient ID is required")
        if len(pid) > 64 or "\\" in pid or not pid.isprintable():
            raise ValueError("patient_id: at most 64 printable characters, no backslash")
        if len(self.patient_name) > 64 or "\\" in self.patient_name:
            raise ValueError("patient_name: at most 64 characters, no backslash")
        if len(self.study_description) > 64 or "\\" in self.study_description:
            raise ValueError("study_description: at most 64 characters, no backslash")
        part = self.body_part.strip()
        if len(part) > 16 or not all(c.isupper() or c.isdigit() or c in " _" for c in part):
            raise ValueError("body_part: a DICOM code string (e.g. CHEST), at most 16")
        if self.modality not in ("CR", "DX", "OT"):
            raise ValueError("modality: CR, DX or OT")
        if self.study_uid is not None:
            try:
                check_uid(self.study_uid, "Study Instance UID")
            except InvalidUID as exc:
                raise ValueError(f"study_uid: {exc}") from exc


def _pixels(data: bytes) -> tuple[np.ndarray, str]:
    """The image's pixels (8 bit) and photometric interpretation; ValueError when it is
    not a JPEG or PNG, or too large."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_TYPES.values():
                raise ValueError("not a JPEG or PNG image")
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS or not width or not height:
                raise ValueError(f"image of {width}x{height} pixels: too large")
            if img.mode in ("L", "1", "I", "I;16", "F"):
                grey = img.convert("L") if img.mode != "L" else img
                return np.asarray(grey, dtype=np.uint8), "MONOCHROME2"
            return np.asarray(img.convert("RGB"), dtype=np.uint8), "RGB"
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable JPEG or PNG image: {exc}") from exc


def _dx_for_presentation(
    pixels: np.ndarray, form: ImageForm, manufacturer: str, study_uid: str
) -> Dataset:
    """A DX For Presentation instance (PS3.3 A.26.2) of an 8-bit grey-scale image: the
    modules highdicom's base class does not write (General Image, Image Pixel, DX Anatomy
    Imaged, DX Image, DX Detector, VOI LUT, Acquisition Context) with the values a
    digitized image can honestly state."""
    dx = hd.base.SOPClass(
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        instance_number=1,
        modality="DX",
        manufacturer=manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=form.patient_id.strip(),
        patient_name=form.patient_name.strip() or None,
    )
    rows, columns = pixels.shape
    dx.PresentationIntentType = "FOR PRESENTATION"
    dx.ReferencedPerformedProcedureStepSequence = []
    dx.ImageType = ["DERIVED", "SECONDARY"]
    dx.ImageLaterality = "U"
    dx.PatientOrientation = ""
    dx.BurnedInAnnotation = "NO"
    dx.LossyImageCompression = "00"
    dx.SamplesPerPixel = 1
    dx.PhotometricInterpretation = "MONOCHROME2"
    dx.Rows, dx.Columns = rows, columns
    dx.BitsAllocated = dx.BitsStored = 8
    dx.HighBit = 7
    dx.PixelRepresentation = 0
    dx.PixelIntensityRelationship = "LIN"
    dx.PixelIntensityRelationshipSign = 1
    dx.RescaleIntercept, dx.RescaleSlope, dx.RescaleType = 0, 1, "US"
    dx.PresentationLUTShape = "IDENTITY"
    dx.WindowCenter, dx.WindowWidth = 128, 256
    dx.DetectorType = ""
    dx.AcquisitionContextSequence = []
    dx.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    if form.body_part.strip():
        dx.BodyPartExamined = form.body_part.strip()
    return dx


def image_to_instance(data: bytes, form: ImageForm, *, manufacturer: str) -> Dataset:
    """The instance of a JPEG or PNG with the form's patient and study (a new study unless
    ``form.study_uid`` names one): DX For Presentation for a grey-scale image the form
    calls DX, a Secondary Capture Image otherwise."""
    pixels, photometric = _pixels(data)
    study_uid = form.study_uid or generate_uid()
    if form.modality == "DX":
        if photometric != "MONOCHROME2":
            raise ValueError("modality DX: a grey-scale image is required (this one is in colour)")
        instance = _dx_for_presentation(pixels, form, manufacturer, study_uid)
    else:
        instance = _secondary_capture(pixels, photometric, form, manufacturer, study_uid)
    if form.study_description:
        instance.StudyDescription = form.study_description.strip()
    instance.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
    return instance


def _secondary_capture(
    pixels: np.ndarray, photometric: str, form: ImageForm, manufacturer: str, study_uid: str
) -> Dataset:
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        patient_id=form.patient_id.strip(),
        patient_name=form.patient_name.strip() or None,
        patient_orientation=("L", "P") if form.modality == "OT" else ("R", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.Modality = form.modality
    if form.body_part.strip():
        sc.BodyPartExamined = form.body_part.strip()
    return sc


def encode(dataset: Dataset) -> bytes:
    """The dataset as explicit VR little endian bytes (what a STOW-RS part carries after
    its File Meta Information)."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, dataset)
    return buf.getvalue()
