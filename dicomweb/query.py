"""QIDO-RS query parameters to a :class:`radnode_core.query.Query` (PS3.18 8.3.4 and 10.6).

The matching itself (universal, single value, wildcard, range and list matching, the
case rules) is :mod:`radnode_core.query`'s, shared with the C-FIND SCP. Here: the
query string's names (keywords or 8-hex-digit tags, the two sequence paths of PS3.18
Table 10.6.1-5), ``includefield``, ``limit``, ``offset`` and ``fuzzymatching``, and the
attributes each level returns by default.
"""

from __future__ import annotations

import re

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from radnode_core.query import (
    INDEXED,
    LEVELS,
    REQUEST_PROCEDURE,
    REQUEST_STEP,
    Level,
    Query,
    QueryError,
    build_select,
    int_value,
)

__all__ = [
    "DEFAULT_RETURN",
    "INDEXED",
    "LEVELS",
    "RESERVED",
    "Level",
    "Query",
    "QueryError",
    "build_select",
    "parse",
    "resolve_keyword",
]

RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})

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


def parse(level: Level, params: list[tuple[str, str]]) -> Query:
    """Parse the query string's (name, value) pairs for a search at ``level``."""
    query = Query(level)
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
            query.limit = int_value("limit", value)
            continue
        if lname == "offset":
            query.offset = int_value("offset", value)
            continue
        if lname == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError("fuzzymatching must be true or false")
            query.fuzzy = value.lower() == "true"
            continue
        query.add_key(resolve_keyword(name), value)
    return query
