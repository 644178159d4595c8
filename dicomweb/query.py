"""QIDO-RS query parameters to SQL over the index (PS3.18 8.3.4 and 10.6; PS3.4 C.2.2.2).

Matching follows PS3.4 C.2.2.2: an empty value matches everything (universal
matching, the attribute is returned), ``*`` and ``?`` are wildcards, a
``-`` makes a date or time a range (``a-b``, ``-b``, ``a-``), UIDs may be a
list (``\\`` or ``,`` separated, or the parameter repeated), any other value
is matched exactly. PN matching is case-insensitive (PS3.4 C.2.2.2.1 allows it;
Orthanc does the same); all other strings are case-sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.sql.elements import ColumnElement as _ColumnElement

from radnode_core.index import instances, series, studies

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")

RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})


class QueryError(ValueError):
    """A malformed QIDO-RS request (400 Bad Request with this message)."""


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    column: Any  # an SQLAlchemy column, or None for computed attributes
    vr: str


REQUEST_STEP = "RequestAttributesSequence.ScheduledProcedureStepID"
REQUEST_PROCEDURE = "RequestAttributesSequence.RequestedProcedureID"


def _attr(keyword: str, level: Level, column: Any) -> tuple[str, Attribute]:
    return keyword, Attribute(keyword, level, column, str(dictionary_VR(keyword)))


INDEXED: dict[str, Attribute] = dict(
    [
        _attr("StudyInstanceUID", "study", studies.c.study_uid),
        _attr("PatientID", "study", studies.c.patient_id),
        _attr("PatientName", "study", studies.c.patient_name),
        _attr("PatientBirthDate", "study", studies.c.patient_birth_date),
        _attr("PatientSex", "study", studies.c.patient_sex),
        _attr("StudyDate", "study", studies.c.study_date),
        _attr("StudyTime", "study", studies.c.study_time),
        _attr("AccessionNumber", "study", studies.c.accession_number),
        _attr("StudyID", "study", studies.c.study_id),
        _attr("StudyDescription", "study", studies.c.study_description),
        _attr("ReferringPhysicianName", "study", studies.c.referring_physician_name),
        _attr("ModalitiesInStudy", "study", None),
        _attr("NumberOfStudyRelatedSeries", "study", None),
        _attr("NumberOfStudyRelatedInstances", "study", studies.c.num_instances),
        _attr("SeriesInstanceUID", "series", series.c.series_uid),
        _attr("Modality", "series", series.c.modality),
        _attr("SeriesNumber", "series", series.c.series_number),
        _attr("SeriesDescription", "series", series.c.series_description),
        _attr("BodyPartExamined", "series", series.c.body_part_examined),
        _attr("SeriesDate", "series", series.c.series_date),
        _attr("SeriesTime", "series", series.c.series_time),
        _attr(
            "PerformedProcedureStepStartDate",
            "series",
            series.c.performed_procedure_step_start_date,
        ),
        _attr(
            "PerformedProcedureStepStartTime",
            "series",
            series.c.performed_procedure_step_start_time,
        ),
        _attr("NumberOfSeriesRelatedInstances", "series", None),
        (
            REQUEST_STEP,
            Attribute(REQUEST_STEP, "series", series.c.scheduled_procedure_step_id, "SH"),
        ),
        (
            REQUEST_PROCEDURE,
            Attribute(REQUEST_PROCEDURE, "series", series.c.requested_procedure_id, "SH"),
        ),
        _attr("SOPInstanceUID", "instance", instances.c.sop_instance_uid),
        _attr("SOPClassUID", "instance", instances.c.sop_class_uid),
        _attr("InstanceNumber", "instance", instances.c.instance_number),
        _attr("Rows", "instance", instances.c.rows),
        _attr("Columns", "instance", instances.c.columns),
        _attr("BitsAllocated", "instance", instances.c.bits_allocated),
        _attr("NumberOfFrames", "instance", instances.c.number_of_frames),
    ]
)
"""Attributes the index can match and return without reading a file."""

# Returned by default at each level (PS3.18 Tables 10.6.3-3, -4, -5), besides matching keys.
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        REQUEST_STEP,
        REQUEST_PROCEDURE,
    ),
    "instance": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

# Matching on these VRs is not by string.
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_LIST_VRS = frozenset({"UI", "CS"})


@dataclass
class Query:
    """A parsed QIDO-RS request."""

    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # valid keywords we cannot match
    include: set[str] = field(default_factory=set)  # extra keywords to return
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False


def _one_keyword(name: str) -> str:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QueryError(f"unknown attribute tag {name}")
        return str(keyword)
    if tag_for_keyword(name) is None:
        raise QueryError(f"unknown attribute {name!r}")
    return name


def resolve_keyword(name: str) -> str:
    """A keyword or an 8-hex-digit tag (PS3.18 8.3.4.1) -> the keyword; QueryError otherwise.

    Of sequence paths (``A.B``) only the two PS3.18 Table 10.6.1-5 requires are known.
    """
    name = name.strip()
    if "." in name:
        path = ".".join(_one_keyword(part) for part in name.split("."))
        if path not in INDEXED:
            raise QueryError(f"sequence matching ({name}) is not supported")
        return path
    return _one_keyword(name)


def _int_param(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be a non-negative integer") from exc
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer")
    return number


def parse(level: Level, params: list[tuple[str, str]]) -> Query:
    """Parse the query string's (name, value) pairs for a search at ``level``."""
    query = Query(level)
    depth = LEVELS.index(level)
    for name, value in params:
        lname = name.lower()
        if lname == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    query.include_all = True
                else:
                    query.include.add(resolve_keyword(item))
            continue
        if lname == "limit":
            query.limit = _int_param("limit", value)
            continue
        if lname == "offset":
            query.offset = _int_param("offset", value)
            continue
        if lname == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError("fuzzymatching must be true or false")
            query.fuzzy = value.lower() == "true"
            continue
        keyword = resolve_keyword(name)
        attr = INDEXED.get(keyword)
        if attr is None or LEVELS.index(attr.level) > depth:
            query.unsupported.append(keyword)
            query.include.add(keyword)
            continue
        if value == "":
            query.include.add(keyword)
            continue
        if attr.column is None and keyword != "ModalitiesInStudy":
            query.unsupported.append(keyword)  # a computed count: returned, not matched
            continue
        _check_value(attr, value)
        query.filters.append((attr, value))
    return query


def _check_value(attr: Attribute, value: str) -> None:
    if len(value) > 1024 or any(c in value for c in "\x00\r\n"):
        raise QueryError(f"invalid value for {attr.keyword}")
    if attr.vr in _INT_VRS:
        for item in value.split("\\"):
            _int_param(attr.keyword, item)
    if attr.vr == "DA" and "*" not in value and "?" not in value:
        for bound in value.split("-"):
            if bound and not re.fullmatch(r"\d{8}", bound):
                raise QueryError(f"{attr.keyword} must be YYYYMMDD or a YYYYMMDD-YYYYMMDD range")
        if value.count("-") > 1:
            raise QueryError(f"{attr.keyword}: malformed date range")
    if attr.vr == "TM" and "*" not in value and "?" not in value:
        for bound in value.split("-"):
            if bound and not re.fullmatch(r"\d{2,6}(\.\d{1,6})?", bound):
                raise QueryError(f"{attr.keyword} must be HHMMSS or a time range")
        if value.count("-") > 1:
            raise QueryError(f"{attr.keyword}: malformed time range")


def _glob_or_like(column: Any, pattern: str, *, sqlite: bool, fold_case: bool) -> Any:
    """DICOM wildcard matching: GLOB on SQLite (case-sensitive), LIKE elsewhere."""
    col = func.lower(column) if fold_case else column
    if fold_case:
        pattern = pattern.lower()
    if sqlite:
        escaped = re.sub(r"([\[\]])", r"[\1]", pattern)
        return col.op("GLOB")(literal(escaped))
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    escaped = escaped.replace("*", "%").replace("?", "_")
    return col.like(escaped, escape="\\")


def _string_match(column: Any, value: str, vr: str, sqlite: bool) -> ColumnElement[bool]:
    fold = vr == "PN"
    if "*" in value or "?" in value:
        return _glob_or_like(column, value, sqlite=sqlite, fold_case=fold)  # type: ignore[no-any-return]
    if fold:
        return func.lower(column) == value.lower()  # type: ignore[no-any-return]
    return column == value  # type: ignore[no-any-return]


def _range_match(column: Any, value: str, vr: str) -> ColumnElement[bool]:
    low, _, high = value.partition("-")
    conditions = [column.isnot(None)]
    if low:
        conditions.append(column >= low)
    if high:
        # "12" as an upper time bound means up to 12:59:59.999999 (PS3.4 C.2.2.2.5).
        conditions.append(column <= (high + "~" if vr in ("TM", "DT") else high))
    return and_(*conditions)


def condition(attr: Attribute, value: str, sqlite: bool) -> ColumnElement[bool]:
    """The SQL condition for one matching key."""
    if attr.keyword == "ModalitiesInStudy":
        items = [v for v in re.split(r"[\\,]", value) if v]
        return exists(  # type: ignore[no-any-return]
            select(literal(1))
            .select_from(series)
            .where(
                series.c.study_uid == studies.c.study_uid,
                or_(*(_string_match(series.c.modality, v, "CS", sqlite) for v in items)),
            )
        )
    column = attr.column
    if attr.vr in _INT_VRS:
        return column.in_([int(v) for v in value.split("\\")])  # type: ignore[no-any-return]
    if attr.vr in _RANGE_VRS and "-" in value and "*" not in value:
        return _range_match(column, value, attr.vr)
    if attr.vr in _LIST_VRS:
        items = [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]
        if len(items) > 1:
            return or_(*(_string_match(column, v, attr.vr, sqlite) for v in items))
        value = items[0] if items else value
    return _string_match(column, value, attr.vr, sqlite)


def build_select(
    query: Query, sqlite: bool, study_uid: str | None = None, series_uid: str | None = None
) -> Select[Any]:
    """The SELECT of one QIDO-RS search: rows of the level's table joined with the levels above."""
    if query.level == "study":
        stmt = select(studies)
        order: list[_ColumnElement[Any]] = [
            studies.c.study_date.desc(),
            studies.c.study_time.desc(),
            studies.c.study_uid,
        ]
    elif query.level == "series":
        stmt = select(series, studies).join(studies, series.c.study_uid == studies.c.study_uid)
        order = [series.c.study_uid, series.c.series_number, series.c.series_uid]
    else:
        stmt = (
            select(instances, series, studies)
            .join(series, instances.c.series_uid == series.c.series_uid)
            .join(studies, instances.c.study_uid == studies.c.study_uid)
        )
        order = [instances.c.series_uid, instances.c.instance_number, instances.c.sop_instance_uid]
    if study_uid is not None:
        stmt = stmt.where(studies.c.study_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(series.c.series_uid == series_uid)
    for attr, value in query.filters:
        stmt = stmt.where(condition(attr, value, sqlite))
    stmt = stmt.order_by(*order)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    if query.offset:
        stmt = stmt.offset(query.offset)
        if query.limit is None:
            stmt = stmt.limit(-1 if sqlite else None)
    return stmt
