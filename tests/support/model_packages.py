"""Model packages for tests: models built in the test (no downloads), their cards and
packages (model file + model.yaml), and small synthetic chest radiographs built with
pydicom."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

CT_CLASSES = ["CTImageStorage", "EnhancedCTImageStorage"]
XR_CLASSES = ["ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation"]


def prototype_cnn(size: int = 128, filters: tuple[int, int, int] = (8, 16, 32)) -> Any:
    """The first prototype's shape: a 128x128x1 slice, 3 convolutions (each with a max
    pool) and 2 dense layers, a sigmoid; narrower than the prototype's 32/64/128 so a test
    builds and runs it in seconds."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 1), name="slice")
    x = inputs
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="prototype_cnn")


def densenet_cxr() -> Any:
    """DenseNet121 for 224x224x3 radiographs, random weights (weights=None: no download)."""
    import keras

    keras.utils.set_random_seed(4)
    return keras.applications.DenseNet121(
        weights=None, input_shape=(224, 224, 3), classes=1, classifier_activation="sigmoid"
    )


def tiny_cxr() -> Any:
    """A small radiograph CNN (64x64x3 input): the X-ray path without DenseNet's minute."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    inputs = keras.Input((64, 64, 3))
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def lambda_model() -> Any:
    """A small model with a Lambda layer (Python code in the file: unsafe)."""
    import keras
    from keras import layers

    inputs = keras.Input((32, 32, 1))
    x = layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def _card(name: str, version: str, applicability: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """What every test card says: random weights, not for clinical use."""
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "intended_use": "Testing radnode's model packages. Not for clinical use.",
        "task": "binary",
        "applicability": applicability,
        **fields,
        "metrics": {},
        "training_data": "none: random weights (a test model)",
        "sha256": "0" * 64,
    }


def ct_card(name: str = "proto-ct", version: str = "1.0", **changes: Any) -> dict[str, Any]:
    """A chest CT card for :func:`prototype_cnn` (its body part from the region model)."""
    card = _card(
        name,
        version,
        {
            "modalities": ["CT"],
            "sop_classes": CT_CLASSES,
            "body_part": {"any_of": ["chest"], "source": "model", "model": "region"},
            "slices": {"min": 4, "max": 600},
        },
        input={
            "kind": "slice",
            "size": [128, 128],
            "channels": 1,
            "normalisation": {
                "scale": "hu_window",
                "windows": [{"center": -600, "width": 1500}],
                "standardise": "none",
            },
        },
        aggregation={"method": "top_k_mean", "k": 3},
        outputs={"labels": ["no nodule", "nodule"], "positive_label": "nodule", "threshold": 0.5},
        sr={"finding": "SCT.Nodule", "finding_site": "SCT.Lung"},
        timeout_s=60,
        model_file="model.h5",
    )
    return _merged(card, changes)


def cxr_card(name: str = "cxr-densenet", version: str = "1.0", **changes: Any) -> dict[str, Any]:
    """A chest X-ray card for :func:`densenet_cxr` (body part from the tag)."""
    card = _card(
        name,
        version,
        {
            "modalities": ["CR", "DX"],
            "sop_classes": XR_CLASSES,
            "body_part": {"any_of": ["CHEST"], "source": "tag"},
            "slices": {"min": 1, "max": 4},
        },
        input={
            "kind": "image",
            "size": [224, 224],
            "channels": 3,
            "normalisation": {
                "scale": "percentile",
                "percentiles": [0.5, 99.5],
                "standardise": "imagenet",
            },
            "invert_monochrome1": True,
        },
        outputs={
            "labels": ["no opacity", "opacity"],
            "positive_label": "opacity",
            "threshold": 0.5,
        },
        sr={"finding": "DCM.AbnormalOpacity", "finding_site": "SCT.Lung"},
        timeout_s=120,
        model_file="model.keras",
    )
    return _merged(card, changes)


def _merged(card: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(card)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_package(folder: Path, model: Any, card: dict[str, Any]) -> Path:
    """A package folder: the model saved as the card's model_file, the card with its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / card["model_file"]
    model.save(model_file)
    card = {**card, "sha256": sha256(model_file)}
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def registry_state(root: Path) -> dict[str, bytes]:
    """Every file of a registry folder and its bytes (to show an import changed nothing)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def radiograph(
    out: Path,
    *,
    study_uid: str,
    patient_id: str = "CXR1",
    instance: int = 1,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    body_part: str = "CHEST",
    modality: str = "CR",
    rows: int = 300,
    columns: int = 256,
    opacity: bool = False,
) -> Path:
    """One synthetic PA chest radiograph (CR, or DX For Presentation) written with pydicom:
    two darker lung fields in a brighter mediastinum and body, an optional round opacity in
    the right lung; ``bits`` stored (10 to 16); MONOCHROME1 stored inverted."""
    rng = np.random.default_rng(instance)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    top = (1 << bits) - 1
    img = np.full((rows, columns), 0.15, np.float32)
    body = ((xx - columns / 2) / (columns * 0.45)) ** 2 + ((yy - rows / 2) / (rows * 0.48)) ** 2
    img[body < 1] = 0.7
    for cx in (columns * 0.32, columns * 0.68):
        lung = ((xx - cx) / (columns * 0.14)) ** 2 + ((yy - rows * 0.45) / (rows * 0.3)) ** 2
        img[lung < 1] = 0.3
    if opacity:
        spot = ((xx - columns * 0.3) ** 2 + (yy - rows * 0.5) ** 2) < (columns * 0.06) ** 2
        img[spot] = 0.65
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    stored = np.clip(img, 0, 1) * top
    if photometric == "MONOCHROME1":
        stored = top - stored
    pixels = stored.astype(np.uint16)

    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series", modality])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "for"])
    ds.PatientName, ds.PatientID = "Radiograph^Test", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    today = dt.date(2026, 11, 30).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "X1", "ACCX1", ""
    ds.Modality = modality
    ds.Manufacturer = "radnode test"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.SeriesDescription = "CHEST PA"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"CR{instance:03d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
