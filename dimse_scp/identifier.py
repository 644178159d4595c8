"""Query/Retrieve Identifiers (PS3.4 C.4): a request's Identifier to a shared
:class:`radnode_core.query.Query`, and the C-FIND response Identifier of one match.

Two information models, searched hierarchically (PS3.4 C.4.1.3.1; relational queries are
not negotiated): Patient Root (PATIENT, STUDY, SERIES, IMAGE) and Study Root (STUDY,
SERIES, IMAGE). At each level below the model's top the Identifier must carry the unique
key of every level above as a single value; a C-MOVE or C-GET also the unique key of its
own level (one UID or a list). Matching is :mod:`radnode_core.query`'s, the same as
QIDO-RS's.

A broken Identifier is refused with a Failure status, never an exception:
``0xA900`` (Identifier does not match SOP Class) for a missing or unknown
Query/Retrieve Level or a missing unique key, ``0xC000`` (Unable to process) for an
Identifier that does not decode or a value its VR does not allow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from radnode_core.query import (
    INDEXED,
    LEVELS,
    PATIENT_COUNTS,
    PATIENT_KEYS,
    Level,
    Query,
    QueryError,
    row_value,
)

IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
QUERY_RETRIEVE_LEVEL = 0x00080052

UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
INDEX_LEVELS: dict[str, Level] = {
    "PATIENT": "study",
    "STUDY": "study",
    "SERIES": "series",
    "IMAGE": "instance",
}
# Keys radnode answers itself, never matched: the level, the character set, where to
# retrieve from, whether the instances are at hand.
_OWN_KEYS = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}
)
# Sequence keys the index matches, by their items' keywords (PS3.18 Table 10.6.1-5).
_SEQUENCE_PATHS = {
    "RequestAttributesSequence": ("ScheduledProcedureStepID", "RequestedProcedureID"),
}


@dataclass(frozen=True)
class InformationModel:
    """A Query/Retrieve Information Model (PS3.4 C.6.1, C.6.2) and its three SOP classes."""

    name: str
    find: str
    move: str
    get: str
    levels: tuple[str, ...]


PATIENT_ROOT = InformationModel(
    "Patient Root",
    str(PatientRootQueryRetrieveInformationModelFind),
    str(PatientRootQueryRetrieveInformationModelMove),
    str(PatientRootQueryRetrieveInformationModelGet),
    ("PATIENT", "STUDY", "SERIES", "IMAGE"),
)
STUDY_ROOT = InformationModel(
    "Study Root",
    str(StudyRootQueryRetrieveInformationModelFind),
    str(StudyRootQueryRetrieveInformationModelMove),
    str(StudyRootQueryRetrieveInformationModelGet),
    ("STUDY", "SERIES", "IMAGE"),
)
MODELS: dict[str, InformationModel] = {
    uid: model
    for model in (PATIENT_ROOT, STUDY_ROOT)
    for uid in (model.find, model.move, model.get)
}
"""SOP Class UID -> its information model (the classes the SCP negotiates)."""


class IdentifierError(ValueError):
    """An Identifier radnode cannot answer; ``status`` is the DIMSE Failure status."""

    def __init__(self, status: int, comment: str, tag: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tag = tag

    def status_dataset(self) -> Dataset:
        """The Failure status with its Error Comment and Offending Element (PS3.7 C.4)."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:64]
        if self.tag is not None:
            ds.OffendingElement = [self.tag]
        return ds


@dataclass
class Request:
    """One parsed C-FIND, C-MOVE or C-GET Identifier."""

    model: InformationModel
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    query: Query
    return_keys: list[str] = field(default_factory=list)  # in the Identifier's order
    empty_keys: list[str] = field(default_factory=list)  # below the level: returned empty
    unmatched: list[str] = field(default_factory=list)  # had a value, not used for matching

    @property
    def unique_keys(self) -> list[str]:
        """The unique keys of the level and the levels above it (returned in every match)."""
        depth = self.model.levels.index(self.level)
        return [UNIQUE_KEYS[level] for level in self.model.levels[: depth + 1]]


def _text(element: DataElement) -> str:
    """An element's value as a matching string: multiple values joined by ``\\``."""
    value = element.value
    if value is None or value == "":
        return ""
    if isinstance(value, bytes):
        raise IdentifierError(
            UNABLE_TO_PROCESS, f"{element.keyword} has a binary value", element.tag
        )
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _keys(identifier: Dataset) -> dict[str, str]:
    """Keyword (or ``Sequence.Keyword`` path) -> value of every public key in the Identifier."""
    keys: dict[str, str] = {}
    for element in identifier:
        keyword = element.keyword
        if not keyword or element.tag.group in (0x0000, 0x0002):
            continue  # private or unknown: neither matched nor returned
        if element.VR == "SQ":
            paths = _SEQUENCE_PATHS.get(keyword)
            items = element.value or []
            if paths is None:
                keys[keyword] = ""  # returned from the instances, not matched
                continue
            item = items[0] if len(items) else Dataset()
            for child in paths:
                if child in item or not len(items):
                    keys[f"{keyword}.{child}"] = _text(item[child]) if child in item else ""
            continue
        keys[keyword] = _text(element)
    return keys


def _single(value: str) -> bool:
    return bool(value) and not any(c in value for c in "\\*?")


def parse(identifier: Dataset, model: InformationModel, *, retrieve: bool = False) -> Request:
    """Parse a C-FIND (or, with ``retrieve``, a C-MOVE/C-GET) Identifier of ``model``.

    Raises :class:`IdentifierError` with the status to answer.
    """
    try:
        keys = _keys(identifier)
    except IdentifierError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure of untrusted input
        raise IdentifierError(
            UNABLE_TO_PROCESS, f"Identifier cannot be decoded: {type(exc).__name__}"
        ) from exc
    level = keys.pop("QueryRetrieveLevel", "").upper()
    if not level:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH, "no Query/Retrieve Level", QUERY_RETRIEVE_LEVEL
        )
    if level not in model.levels:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH,
            f"level {level} is not in the {model.name} model",
            QUERY_RETRIEVE_LEVEL,
        )
    depth = model.levels.index(level)
    request = Request(model, level, Query(INDEX_LEVELS[level]))
    for above in model.levels[:depth]:
        key = UNIQUE_KEYS[above]
        if not _single(keys.get(key, "")):
            raise IdentifierError(
                IDENTIFIER_DOES_NOT_MATCH,
                f"{key} must be one value in a {level} query",
                tag_for_keyword(key),
            )
    if retrieve:
        return _retrieve_request(request, keys)
    for keyword, value in keys.items():
        if keyword in _OWN_KEYS:
            continue
        try:
            _add(request, keyword, value)
        except QueryError as exc:
            raise IdentifierError(
                UNABLE_TO_PROCESS, str(exc), tag_for_keyword(keyword.split(".")[0])
            ) from exc
    for key in request.unique_keys:
        if key not in request.return_keys:
            request.return_keys.append(key)
    return request


def _add(request: Request, keyword: str, value: str) -> None:
    attr = INDEXED.get(keyword)
    query = request.query
    if request.level == "PATIENT":
        if keyword in PATIENT_KEYS:
            query.add_key(keyword, value)
        elif keyword in PATIENT_COUNTS or attr is None:
            if value:
                request.unmatched.append(keyword)
        else:
            request.empty_keys.append(keyword)
            return
        request.return_keys.append(keyword)
        return
    if attr is not None and LEVELS.index(attr.level) > LEVELS.index(query.level):
        request.empty_keys.append(keyword)
        return
    if keyword == "ModalitiesInStudy" and value and request.level != "STUDY":
        # As in QIDO-RS: its match over the study's series is a study-level one.
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH,
            "ModalitiesInStudy is matched in STUDY queries only",
            tag_for_keyword(keyword),
        )
    before = len(query.filters)
    query.add_key(keyword, value)
    if value and len(query.filters) == before:
        request.unmatched.append(keyword)
    request.return_keys.append(keyword)


def _retrieve_request(request: Request, keys: dict[str, str]) -> Request:
    """C-MOVE/C-GET: the instances under the unique keys (PS3.4 C.4.2.2.1), nothing else."""
    key = UNIQUE_KEYS[request.level]
    value = keys.get(key, "")
    if not value or "*" in value or "?" in value:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH,
            f"{key} must be a value or a list of values",
            tag_for_keyword(key),
        )
    query = Query("instance")
    depth = request.model.levels.index(request.level)
    try:
        for level in request.model.levels[: depth + 1]:
            query.add_key(UNIQUE_KEYS[level], keys[UNIQUE_KEYS[level]])
    except QueryError as exc:
        raise IdentifierError(UNABLE_TO_PROCESS, str(exc)) from exc
    request.query = query
    return request


# -- the response Identifier -----------------------------------------------------------


def _vr(tag: int) -> str:
    return str(dictionary_VR(tag)).split(" or ")[0]


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if value == "" or value == []:
        value = None
    # The index's values were read from stored instances; checking each again per
    # response would cost more than the rest of building it.
    ds.add(DataElement(tag, _vr(tag), value, validation_mode=config.IGNORE))


def _from_header(ds: Dataset, keyword: str, header: Dataset | None) -> None:
    """A key the index lacks: its value in the level's first instance, else empty."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    if header is None or tag not in header:
        ds.add(DataElement(tag, _vr(tag), [] if _vr(tag) == "SQ" else None))
        return
    element = header[tag]
    value = element.value
    if element.VR == "PN":
        value = [str(v) for v in value] if isinstance(value, MultiValue) else str(value or "")
    ds.add(DataElement(tag, element.VR, value))


def _needs_utf8(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == "SQ":
            if any(_needs_utf8(item) for item in element.value or []):
                return True
            continue
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        if any(v is not None and not str(v).isascii() for v in values):
            return True
    return False


def response(
    request: Request,
    row: Any,
    extra: dict[str, dict[str, Any]],
    header: Callable[[], Dataset | None],
    retrieve_ae_title: str,
) -> Dataset:
    """The pending C-FIND response Identifier of one match (PS3.4 C.4.1.1.3.2): the
    requested keys with their values, the unique keys, the level and where to retrieve
    from; Specific Character Set ISO_IR 192 (UTF-8) when a value is not ASCII.

    ``row`` is a row of :func:`radnode_core.query.build_select` (or, at the PATIENT level,
    of :func:`~radnode_core.query.build_patient_select`); ``header`` reads the level's
    first instance, only when a requested key is not in the index.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = request.level
    loaded: list[Dataset | None] = []

    def first_header() -> Dataset | None:
        if not loaded:
            loaded.append(header())
        return loaded[0]

    sequences: dict[str, Dataset] = {}
    for keyword in request.return_keys:
        if "." in keyword:
            parent, child = keyword.split(".")
            item = sequences.get(parent)
            if item is None:
                item = sequences[parent] = Dataset()
                setattr(ds, parent, Sequence([item]))
            _set(item, child, row_value(keyword, row, extra))
        elif request.level == "PATIENT" and keyword in _PATIENT_COLUMNS:
            _set(ds, keyword, row[_PATIENT_COLUMNS[keyword]])
        elif keyword in INDEXED:
            _set(ds, keyword, row_value(keyword, row, extra))
        else:
            _from_header(ds, keyword, first_header())
    for keyword in request.empty_keys:
        tag = tag_for_keyword(keyword.split(".")[0])
        if tag is not None and tag not in ds:
            ds.add(DataElement(tag, _vr(tag), [] if _vr(tag) == "SQ" else None))
    ds.RetrieveAETitle = retrieve_ae_title
    if _needs_utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


# Columns of radnode_core.query.build_patient_select's rows.
_PATIENT_COLUMNS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "NumberOfPatientRelatedStudies": "studies",
    "NumberOfPatientRelatedSeries": "series",
    "NumberOfPatientRelatedInstances": "instances",
}
