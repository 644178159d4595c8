"""Data of the DICOMweb tests: varied small studies to store and query, and where a
running radnode serves DICOMweb."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.radnode_process import RadnodeProcess

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class StudySpec:
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    accession: str
    study_id: str
    description: str
    referring: str
    series: tuple[tuple[str, int, str, int], ...]  # modality, number, description, instances


# Chosen to exercise case, wildcards, ranges and lists; ASCII only so both servers
# compare the same characters.
VARIED: tuple[StudySpec, ...] = (
    StudySpec("Doe^John", "P001", "20240101", "083000", "ACC001", "S1", "CT CHEST", "Smith^Ann",
              (("CT", 1, "AXIAL", 3), ("SR", 99, "AI RESULT", 1))),
    StudySpec("Doe^Jane", "P002", "20240115", "101500.5", "ACC002", "S2", "CT HEAD", "Smith^Bob",
              (("CT", 1, "HEAD", 2),)),
    StudySpec("DOE^JOHNNY", "P003", "20240131", "235959", "ACC010", "S3", "MR BRAIN", "",
              (("MR", 1, "T1", 2), ("MR", 2, "T2", 2))),
    StudySpec("Mueller^Hans", "P004", "20231231", "120000", "ACC100", "S4", "CR CHEST", "Jones^Tim",
              (("CR", 1, "PA", 1), ("CR", 2, "LAT", 1))),
    StudySpec("Smith^Anna", "P005", "20240201", "000001", "X-1", "S5", "CT ABDOMEN", "Smith^Ann",
              (("CT", 3, "PORTAL", 2), ("SEG", 4, "AI SEG", 1))),
    StudySpec("Lee^Kim", "P006", "20240615", "153000", "ACC006", "S6", "US ABDOMEN", "Lee^Ray",
              (("US", 1, "LIVER", 2),)),
    StudySpec("Doe^John", "P001", "20240301", "091500", "ACC007", "S7", "CT CHEST FU", "Smith^Ann",
              (("CT", 1, "AXIAL", 2),)),
    StudySpec("OBrien^Pat", "P008", "20220505", "070000", "ACC008", "S8", "PET CT", "Jones^Tim",
              (("PT", 1, "WB", 1), ("CT", 2, "CTAC", 1))),
)


def make_instance(spec: StudySpec, study_uid: str, series_uid: str, modality: str, number: int,
                  description: str, instance_number: int) -> Dataset:
    """A small (16x16) image with the study's attributes, as a Part 10 dataset."""
    ds = Dataset()
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
    ds.StudyID = spec.study_id
    ds.StudyDescription = spec.description
    ds.ReferringPhysicianName = spec.referring
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    if modality == "CT":  # for the sequence matching keys of PS3.18 Table 10.6.1-5
        request = Dataset()
        request.ScheduledProcedureStepID = f"SPS-{spec.study_id}"
        request.RequestedProcedureID = f"RP-{spec.accession}"
        ds.RequestAttributesSequence = [request]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = (np.arange(256, dtype=np.int16) * instance_number).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@dataclass
class VariedStudies:
    specs: tuple[StudySpec, ...]
    study_uids: list[str]
    datasets: list[Dataset]

    def of_study(self, index: int) -> list[Dataset]:
        return [d for d in self.datasets if d.StudyInstanceUID == self.study_uids[index]]


def make_varied_studies() -> VariedStudies:
    """The studies of ``VARIED`` with fresh UIDs."""
    study_uids: list[str] = []
    datasets: list[Dataset] = []
    for spec in VARIED:
        study_uid = generate_uid()
        study_uids.append(study_uid)
        for modality, number, description, count in spec.series:
            series_uid = generate_uid()
            for i in range(1, count + 1):
                datasets.append(
                    make_instance(spec, study_uid, series_uid, modality, number, description, i)
                )
    return VariedStudies(VARIED, study_uids, datasets)


def part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dicomweb_url(node: RadnodeProcess) -> str:
    return f"http://127.0.0.1:{node.http_port}/dicom-web"


def today() -> str:
    return dt.date.today().strftime("%Y%m%d")
