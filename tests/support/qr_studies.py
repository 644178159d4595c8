"""Small varied studies for the Query/Retrieve tests: patients, dates, times, accession
numbers, modalities and series chosen to exercise case, wildcards, ranges and lists, one
patient name outside ASCII (UTF-8, ISO_IR 192), one study with a request attributes
sequence per series. Part 10 files (explicit VR little endian, 16x16 pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Spec:
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    accession: str
    description: str
    series: tuple[tuple[str, int, str, int], ...]  # modality, number, description, instances


SPECS: tuple[Spec, ...] = (
    Spec(
        "Doe^John",
        "P001",
        "20240101",
        "083000",
        "ACC001",
        "CT CHEST",
        (("CT", 1, "AXIAL", 3), ("SR", 99, "AI RESULT", 1)),
    ),
    Spec("Doe^Jane", "P002", "20240115", "101500.5", "ACC002", "CT HEAD", (("CT", 1, "HEAD", 2),)),
    Spec(
        "DOE^JOHNNY",
        "P003",
        "20240131",
        "235959",
        "ACC010",
        "MR BRAIN",
        (("MR", 1, "T1", 2), ("MR", 2, "T2", 2)),
    ),
    Spec(
        "Müller^Jürgen",
        "P004",
        "20231231",
        "120000",
        "ACC100",
        "CR CHEST",
        (("CR", 1, "PA", 1), ("CR", 2, "LAT", 1)),
    ),
    Spec(
        "Smith^Anna",
        "P005",
        "20240201",
        "000001",
        "X-1",
        "CT ABDOMEN",
        (("CT", 3, "PORTAL", 2), ("SEG", 4, "AI SEG", 1)),
    ),
    Spec(
        "Doe^John", "P001", "20240301", "091500", "ACC007", "CT CHEST FU", (("CT", 1, "AXIAL", 2),)
    ),
)


@dataclass(frozen=True)
class Studies:
    specs: tuple[Spec, ...]
    study_uids: list[str]
    files: list[Path]
    datasets: list[Dataset]

    def series_of(self, index: int) -> list[str]:
        uid = self.study_uids[index]
        return sorted(
            {str(d.SeriesInstanceUID) for d in self.datasets if d.StudyInstanceUID == uid}
        )


def instance(
    spec: Spec,
    study_uid: str,
    series_uid: str,
    modality: str,
    number: int,
    description: str,
    instance_number: int,
) -> Dataset:
    ds = Dataset()
    if not spec.patient_name.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE if modality == "CT" else SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyID = spec.accession[-2:]
    ds.StudyDescription = spec.description
    ds.ReferringPhysicianName = "Smith^Ann"
    ds.InstitutionName = "Radnode General"
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    if modality == "CT":
        request = Dataset()
        request.ScheduledProcedureStepID = f"SPS-{spec.accession}"
        request.RequestedProcedureID = f"RP-{spec.accession}"
        ds.RequestAttributesSequence = [request]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = (np.arange(256, dtype=np.int16) * instance_number).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_studies(out: Path, specs: tuple[Spec, ...] = SPECS) -> Studies:
    """Every spec's study as files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    study_uids: list[str] = []
    files: list[Path] = []
    datasets: list[Dataset] = []
    for spec in specs:
        study_uid = generate_uid()
        study_uids.append(study_uid)
        for modality, number, description, count in spec.series:
            series_uid = generate_uid()
            for i in range(1, count + 1):
                ds = instance(spec, study_uid, series_uid, modality, number, description, i)
                path = out / f"{ds.SOPInstanceUID}.dcm"
                path.write_bytes(part10(ds))
                files.append(path)
                datasets.append(ds)
    return Studies(specs, study_uids, files, datasets)
