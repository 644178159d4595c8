"""Matching keys to SQL over the index: the one matching of QIDO-RS and C-FIND (PS3.4 C.2.2.2).

Both query edges parse their request into a :class:`Query` (``dicomweb.query`` from a
QIDO-RS query string, ``dimse_scp.identifier`` from a C-FIND, C-MOVE or C-GET
Identifier) and run :func:`build_select`, so a query matches the same instances
whichever way it comes in:

- an empty value matches everything (universal matching, PS3.4 C.2.2.2.3): the
  attribute is returned, not matched;
- ``*`` and ``?`` are wildcards (C.2.2.2.4); a lone ``*`` matches any value but not a
  missing one (the index keeps an empty value as missing);
- a ``-`` makes a date or time a range (``a-b``, ``-b``, ``a-``; C.2.2.2.5); an upper
  time bound covers its whole last component;
- UIDs and code strings may be a list (``\\`` separated, in QIDO-RS also ``,``; C.2.2.2.2);
- any other value is matched exactly (single value matching, C.2.2.2.1).

PN matching is case-insensitive (C.2.2.2.1 allows it; Orthanc does the same); every
other string is case-sensitive. Integers (IS, US, ...) match by value.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
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
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement as _ColumnElement

from radnode_core.index import instances, series, studies

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


class QueryError(ValueError):
    """A malformed query (QIDO-RS: 400 Bad Request; C-FIND: a failure status)."""


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

PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
"""The patient-level attributes of the index (kept on each study's row)."""

PATIENT_COUNTS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
"""Computed patient-level attributes (C-FIND at the PATIENT level, PS3.4 C.6.1.1.2)."""

# Matching on these VRs is not by string.
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_LIST_VRS = frozenset({"UI", "CS"})


@dataclass
class Query:
    """A parsed query: its level, matching keys and the keys to return."""

    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # valid keywords we cannot match
    include: set[str] = field(default_factory=set)  # extra keywords to return
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False

    def add_key(self, keyword: str, value: str) -> None:
        """One key of the request: a matching key, or a key only to return.

        Keys the index does not hold, or holds below the query's level, are returned but
        not matched (listed in ``unsupported``); so are the computed counts. Raises
        :class:`QueryError` for a value the key's VR does not allow.
        """
        attr = INDEXED.get(keyword)
        if attr is None or LEVELS.index(attr.level) > LEVELS.index(self.level):
            self.unsupported.append(keyword)
            self.include.add(keyword)
            return
        if value == "":
            self.include.add(keyword)
            return
        if attr.column is None and keyword != "ModalitiesInStudy":
            self.unsupported.append(keyword)  # a computed count: returned, not matched
            return
        check_value(attr, value)
        self.filters.append((attr, value))


def int_value(name: str, value: str) -> int:
    """A non-negative integer, else :class:`QueryError` naming ``name``."""
    try:
        number = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be a non-negative integer") from exc
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer")
    return number


def check_value(attr: Attribute, value: str) -> None:
    """Refuse a value the attribute's VR cannot match (PS3.5 6.2: DA, TM, IS)."""
    if len(value) > 1024 or any(c in value for c in "\x00\r\n"):
        raise QueryError(f"invalid value for {attr.keyword}")
    if attr.vr in _INT_VRS:
        for item in value.split("\\"):
            int_value(attr.keyword, item)
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
    """The SELECT of one search: rows of the level's table joined with the levels above."""
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


def build_patient_select(query: Query, sqlite: bool) -> Select[Any]:
    """The patients matching ``query``'s patient-level keys (study rows grouped by Patient ID).

    The index has no patient table: a patient is the Patient ID its studies share, with
    the name, birth date and sex of its newest study, and its study, series and instance
    counts. Studies without a Patient ID are no patient.
    """
    matching = select(studies.c.study_uid).where(studies.c.patient_id.isnot(None))
    for attr, value in query.filters:
        if attr.keyword not in PATIENT_KEYS:
            raise QueryError(f"{attr.keyword} is not a patient-level key")
        matching = matching.where(condition(attr, value, sqlite))
    ranked = (
        select(
            studies.c.patient_id,
            studies.c.patient_name,
            studies.c.patient_birth_date,
            studies.c.patient_sex,
            func.row_number()
            .over(
                partition_by=studies.c.patient_id,
                order_by=[studies.c.study_date.desc(), studies.c.study_uid],
            )
            .label("newest"),
            func.count().over(partition_by=studies.c.patient_id).label("studies"),
            func.sum(studies.c.num_instances)
            .over(partition_by=studies.c.patient_id)
            .label("instances"),
        )
        .where(studies.c.study_uid.in_(matching))
        .subquery()
    )
    series_counts = (
        select(studies.c.patient_id, func.count().label("series"))
        .select_from(series.join(studies, series.c.study_uid == studies.c.study_uid))
        .group_by(studies.c.patient_id)
        .subquery()
    )
    stmt = (
        select(
            ranked.c.patient_id,
            ranked.c.patient_name,
            ranked.c.patient_birth_date,
            ranked.c.patient_sex,
            ranked.c.studies,
            ranked.c.instances,
            func.coalesce(series_counts.c.series, 0).label("series"),
        )
        .select_from(
            ranked.outerjoin(series_counts, series_counts.c.patient_id == ranked.c.patient_id)
        )
        .where(ranked.c.newest == 1)
        .order_by(ranked.c.patient_id)
    )
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def computed_values(conn: Connection, level: Level, rows: list[Any]) -> dict[str, dict[str, Any]]:
    """The computed attributes of ``rows`` (one query per 500): ModalitiesInStudy and the
    study and series counts, keyed by Study or Series Instance UID."""
    extra: dict[str, dict[str, Any]] = defaultdict(dict)
    if not rows:
        return extra
    if level == "study":
        uids = [r[studies.c.study_uid] for r in rows]
        modalities: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for i in range(0, len(uids), 500):
            stmt = (
                select(series.c.study_uid, series.c.modality, func.count())
                .where(series.c.study_uid.in_(uids[i : i + 500]))
                .group_by(series.c.study_uid, series.c.modality)
            )
            for study_uid, modality, count in conn.execute(stmt):
                if modality:
                    modalities[study_uid].add(modality)
                counts[study_uid] += count
        for uid in uids:
            extra[uid]["ModalitiesInStudy"] = sorted(modalities[uid])
            extra[uid]["NumberOfStudyRelatedSeries"] = counts[uid]
    else:
        uids = sorted({r[series.c.series_uid] for r in rows})
        for i in range(0, len(uids), 500):
            stmt = (
                select(instances.c.series_uid, func.count())
                .where(instances.c.series_uid.in_(uids[i : i + 500]))
                .group_by(instances.c.series_uid)
            )
            for series_uid, count in conn.execute(stmt):
                extra[series_uid]["NumberOfSeriesRelatedInstances"] = count
        if level == "instance":
            study_uids = sorted({r[studies.c.study_uid] for r in rows})
            stmt = (
                select(series.c.study_uid, series.c.modality, func.count())
                .where(series.c.study_uid.in_(study_uids))
                .group_by(series.c.study_uid, series.c.modality)
            )
            for study_uid, modality, count in conn.execute(stmt):
                entry = extra[study_uid]
                entry.setdefault("ModalitiesInStudy", [])
                if modality:
                    entry["ModalitiesInStudy"].append(modality)
                entry["NumberOfStudyRelatedSeries"] = (
                    entry.get("NumberOfStudyRelatedSeries", 0) + count
                )
    return extra


def row_value(keyword: str, row: Any, extra: dict[str, dict[str, Any]]) -> Any:
    """An indexed attribute's value in a row of :func:`build_select` (or a computed one)."""
    attr = INDEXED[keyword]
    if attr.column is not None:
        return row[attr.column]
    key = row[series.c.series_uid] if attr.level == "series" else row[studies.c.study_uid]
    return extra.get(key, {}).get(keyword)
