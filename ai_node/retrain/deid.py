"""De-identification of the exported studies: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile (E.2) with the Retain Longitudinal Temporal Information Modified
Dates Option (E.3.6).

Why not a library: dicom-anonymizer (KitwareMedical) carries the Table E.1-1 action table
but applies it to the top-level dataset only (values nested in sequences stay), maps UIDs
to random digits per process (not stable across retrains) and has no date-shift option;
dicognito shifts dates but keeps free text (ImageComments, descriptions) and sets neither
Patient Identity Removed nor the De-identification Method Code Sequence; pydicom/deid's
default recipe is the CTP one, not Table E.1-1. Rather than patch one of them, this module
applies the profile with a stricter, clean-by-default rule that covers every nesting level:

* the attributes of Table E.1-1 that a CT study carries get their action (D: a pseudonym
  for Patient's Name and ID; Z: empty Type 2 attributes; X: removed, among them the times
  that are X in the Basic profile: Patient's Birth Time, Contrast/Bolus Start and Stop
  Time, Performed Procedure Step Start and End Time);
* every other element is handled by its VR, at every depth of every sequence:
  UI: replaced (U) by ``2.25.<hash of salt and UID>``, the same for every file and every
  export (standard UIDs under ``1.2.840.10008.`` stay); DA / DT: shifted by a constant
  number of days per patient (the Modified Dates option, E.3.6); TM: kept (Study, Series,
  Acquisition and Content Time are Z or X/D in the Basic profile and C, modified
  consistently, under the Modified Dates option: a whole-day shift leaves the time of day
  as it was); person names (PN), free text and identifiers (LO, SH, LT, ST, UT, UC, UR,
  AE, AS) and unknown VRs (UN) are removed unless they are on :data:`KEEP` (technical
  text: manufacturer, kernel, code values and meanings); coded strings (CS) and numbers
  stay;
* private elements (odd groups) are removed (E.3.10 not applied), and so are overlays
  (60xx) and curves (50xx);
* the result carries Patient Identity Removed YES (0012,0062), De-identification Method
  (0012,0063), the De-identification Method Code Sequence (0012,0064) with CID 7050 codes
  113100 (Basic profile) and 113107 (Modified Dates option), and Longitudinal Temporal
  Information Modified MODIFIED (0028,0303); the file meta is rebuilt and the preamble
  is zeroed (PS3.10 7.1).

Instances with Burned In Annotation YES are refused (:class:`DeidError`): the Clean Pixel
Data option (E.3.1) is not implemented.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
from collections.abc import Callable

from highdicom.sr import CodedConcept
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

logger = logging.getLogger(__name__)

DEIDENTIFICATION_METHOD = "PS3.15 E Basic Profile, Modified Dates Option (radnode)"
"""De-identification Method (0012,0063), LO: at most 64 characters."""
PROFILE_CODES = (
    codes.DCM.BasicApplicationConfidentialityProfile,  # 113100, CID 7050
    codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,  # 113107
)

KEEP = frozenset(
    {
        # technical text that identifies no one (not in Table E.1-1, or K there)
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        "ConvolutionKernel",
        "FilterType",
        "RescaleType",
        "WindowCenterWidthExplanation",
        "PositionReferenceIndicator",
        "SpecificCharacterSet",
        "LossyImageCompressionMethod",
        # coded entries (PS3.3 8.8): values and meanings of standard codes
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "MappingResource",
        "ContextIdentifier",
        "ContextGroupVersion",
        # set by this module
        "PatientIdentityRemoved",
        "DeidentificationMethod",
    }
)
"""Text elements kept as they are (every other text, name and identifier is removed)."""

EMPTY = frozenset(
    {
        # Table E.1-1 action Z (Type 2 in the CT Image IOD: present, empty)
        "PatientBirthDate",
        "PatientSex",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)

REMOVE = frozenset(
    {
        # Table E.1-1 action X on elements the VR rule would otherwise keep
        "PatientAge",
        "PatientBirthTime",  # (0010,0032) TM
        "PatientSize",
        "PatientWeight",
        "OtherPatientIDsSequence",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ReferencedPatientPhotoSequence",
        "RequestAttributesSequence",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartTime",  # (0040,0245) TM
        "PerformedProcedureStepEndTime",  # (0040,0251) TM
        "ContrastBolusStartTime",  # (0018,1042) TM
        "ContrastBolusStopTime",  # (0018,1043) TM
        "AdmissionID",
        "IssuerOfPatientID",
        "PatientInsurancePlanCodeSequence",
        "PatientPrimaryLanguageCodeSequence",
        "EthnicGroup",
        "Occupation",
        "PregnancyStatus",
        "PatientState",
        "SmokingStatus",
        "AdditionalPatientHistory",
        "MilitaryRank",
        "BranchOfService",
        "ResponsibleOrganization",
        "DeviceSerialNumber",
        "PlateID",
        "GantryID",
        "CassetteID",
        "DetectorID",
        "ContentCreatorName",
        "OperatorIdentificationSequence",
        "PerformingPhysicianIdentificationSequence",
        "PhysiciansOfRecordIdentificationSequence",
        "ReferringPhysicianIdentificationSequence",
        "InstitutionCodeSequence",
        "SourceApplicationEntityTitle",
        "DigitalSignaturesSequence",
        "OriginalAttributesSequence",
        "MACParametersSequence",
        "EncryptedAttributesSequence",
    }
)

_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE", "AS", "UN"})
_STANDARD_UID_ROOT = "1.2.840.10008."
MAX_SHIFT_DAYS = 3650
"""Dates move back by 365 .. 365 + MAX_SHIFT_DAYS days, a constant per patient."""


class DeidError(ValueError):
    """An instance this profile cannot de-identify (burned-in text, no Patient ID)."""


def _digest(salt: str, *parts: str) -> bytes:
    h = hashlib.sha256(salt.encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.digest()


def patient_key(salt: str, patient_id: str) -> str:
    """The pseudonymous patient key (Patient ID after export; the split key)."""
    return "RN" + _digest(salt, "patient", patient_id).hex()[:20].upper()


def date_shift_days(salt: str, patient_id: str) -> int:
    """The patient's constant date shift (negative days; E.3.6 Modified Dates)."""
    value = int.from_bytes(_digest(salt, "dates", patient_id)[:8], "big")
    return -(365 + value % MAX_SHIFT_DAYS)


def remap_uid(salt: str, uid: str) -> str:
    """A UID under 2.25 (PS3.5 B.2) derived from the salt and the original: the same
    original gives the same replacement in every file and every export."""
    if uid.startswith(_STANDARD_UID_ROOT):
        return uid
    value = int.from_bytes(_digest(salt, "uid", uid)[:16], "big")
    return f"2.25.{value}"


def _shift_da(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8:
        return ""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d")


def _shift_dt(value: str, days: int) -> str:
    value = value.strip()
    shifted = _shift_da(value[:8], days)
    return shifted + value[8:] if shifted else ""


class Deidentifier:
    """De-identifies datasets with one salt (the node's secret): pseudonyms, UID
    replacements and date shifts repeat across files and exports for the same input."""

    def __init__(self, salt: str) -> None:
        if len(salt) < 8:
            raise ValueError("the de-identification salt must be at least 8 characters")
        self.salt = salt

    def __call__(self, original: Dataset) -> Dataset:
        """A de-identified copy of ``original`` (a file dataset), ready to write."""
        if str(original.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidError("Burned In Annotation is YES: Clean Pixel Data is not implemented")
        patient_id = str(original.get("PatientID", "") or "")
        if not patient_id:
            raise DeidError("no Patient ID: the date shift and the split need one")
        ds = copy.deepcopy(original)
        ds.remove_private_tags()
        days = date_shift_days(self.salt, patient_id)
        self._clean(ds, days)
        key = patient_key(self.salt, patient_id)
        ds.PatientName = f"ANON^{key[-8:]}"
        ds.PatientID = key
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
        ds.DeidentificationMethodCodeSequence = [CodedConcept.from_code(c) for c in PROFILE_CODES]
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        source_syntax = getattr(original, "file_meta", Dataset()).get("TransferSyntaxUID")
        compressed = source_syntax is not None and UID(source_syntax).is_compressed
        meta.TransferSyntaxUID = UID(source_syntax) if compressed else ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128
        return ds

    def _clean(self, ds: Dataset, days: int) -> None:
        for elem in list(ds):
            action = self._action(elem, days)
            if action is None:
                del ds[elem.tag]
            else:
                action(elem)

    def _action(self, elem: DataElement, days: int) -> Callable[[DataElement], None] | None:
        """What to do with one element: None removes it, else a function applied to it."""
        tag, keyword, vr = elem.tag, elem.keyword, elem.VR
        if tag.group in range(0x5000, 0x5100) or tag.group in range(0x6000, 0x6100):
            return None  # curves and overlays (Table E.1-1: X)
        if keyword in REMOVE:
            return None
        if keyword in EMPTY:
            return _empty
        if vr == "SQ":
            return lambda e: self._clean_items(e, days)
        if vr == "UI":
            return self._remap
        if vr == "DA":
            return lambda e: _map_values(e, lambda v: _shift_da(v, days))
        if vr == "DT":
            return lambda e: _map_values(e, lambda v: _shift_dt(v, days))
        if vr in _TEXT_VRS and keyword not in KEEP:
            return None
        return _keep

    def _clean_items(self, elem: DataElement, days: int) -> None:
        for item in elem.value:
            self._clean(item, days)

    def _remap(self, elem: DataElement) -> None:
        _map_values(elem, lambda v: remap_uid(self.salt, v))


def _keep(elem: DataElement) -> None:
    return None


def _empty(elem: DataElement) -> None:
    elem.value = [] if elem.VR == "SQ" else ""


def _map_values(elem: DataElement, fn: Callable[[str], str]) -> None:
    if elem.value is None or elem.value == "":
        return
    if elem.VM > 1:
        elem.value = [fn(str(v)) for v in elem.value]
    else:
        elem.value = fn(str(elem.value))
