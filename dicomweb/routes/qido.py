"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

An empty result is ``200`` with ``[]`` (never 204), so every client gets JSON.
Matching keys the index cannot match (attributes it does not keep) are
ignored for matching and named in a ``Warning: 299`` header (PS3.18 8.3.4.2);
they and ``includefield`` attributes outside the index are returned from the
header of the level's first instance.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import func, select

from dicomweb.auditing import requester
from dicomweb.deps import HeadersDep, NodeDep, checked_uid, dicomweb_base, require_read
from dicomweb.dicomjson import DICOM_JSON, element, tag_hex
from dicomweb.headers import InstanceHeaders
from dicomweb.query import (
    DEFAULT_RETURN,
    INDEXED,
    LEVELS,
    RESERVED,
    Level,
    Query,
    QueryError,
    build_select,
    parse,
    resolve_keyword,
)
from radnode_core.index import INT_MAX, INT_MIN, instances, series, studies
from radnode_core.node import Node

router = APIRouter(prefix="/dicom-web", tags=["QIDO-RS"], dependencies=[require_read])


def _returned_keywords(query: Query, levels: tuple[Level, ...]) -> list[str]:
    """Default attributes of ``levels``, then indexed matching keys and includefields."""
    depth = LEVELS.index(query.level)
    keywords: list[str] = []
    for level in levels:
        keywords.extend(DEFAULT_RETURN[level])
    if query.include_all:
        keywords.extend(
            k for k, a in INDEXED.items() if LEVELS.index(a.level) <= depth and k not in keywords
        )
    keywords.extend(attr.keyword for attr, _ in query.filters if attr.keyword not in keywords)
    keywords.extend(
        k
        for k in sorted(query.include)
        if k in INDEXED and LEVELS.index(INDEXED[k].level) <= depth and k not in keywords
    )
    return keywords


def _file_keywords(query: Query) -> list[str]:
    depth = LEVELS.index(query.level)
    return sorted(
        k for k in query.include if k not in INDEXED or LEVELS.index(INDEXED[k].level) > depth
    )


def _search(
    request: Request,
    node: Node,
    headers: InstanceHeaders,
    level: Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> JSONResponse:
    params = list(request.query_params.multi_items())
    try:
        check_numbers(params)
        query = parse(level, params)
        if level != "study" and any(a.keyword == "ModalitiesInStudy" for a, _ in query.filters):
            # Its EXISTS over series cannot correlate with a series-level select.
            raise QueryError("ModalitiesInStudy is matched in study searches only (/studies)")
    except QueryError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    cap = node.settings.qido_max_results
    capped = query.limit is None or query.limit > cap
    if capped:
        query.limit = cap + 1  # one more than is returned: tells whether there are more
    stmt = build_select(query, node.index.is_sqlite, study_uid, series_uid)
    with node.index.engine.connect() as conn:
        rows = [row._mapping for row in conn.execute(stmt)]
        more = capped and len(rows) > cap
        rows = rows[:cap]
        extra = _aggregates(conn, level, rows)
    base = dicomweb_base(request)
    # PS3.18 10.6.3.3: a search not scoped by a parent also returns the parents' attributes.
    if study_uid is None:
        levels = LEVELS[: LEVELS.index(level) + 1]
    elif series_uid is None and level == "instance":
        levels = ("series", "instance")
    else:
        levels = (level,)
    keywords = _returned_keywords(query, levels)
    file_keywords = _file_keywords(query)
    answer = []
    for row in rows:
        item: dict[str, Any] = {}
        for keyword in keywords:
            value = _value(keyword, row, extra)
            if "." in keyword:
                _nest(item, keyword, value)
                continue
            tag, entry = element(keyword, value)
            item[tag] = entry
        item.update(_retrieve_url(level, row, base))
        if file_keywords:
            item.update(_from_file(node, headers, level, row, file_keywords))
        answer.append(dict(sorted(item.items())))
    user, address = requester(request)
    node.audit.query(user=user, address=address, path=request.url.path, query=request.url.query)
    warnings = []
    if query.unsupported:
        names = ", ".join(sorted(set(query.unsupported)))
        warnings.append(f'299 radnode "The following attributes are not matched: {names}"')
    if more:  # PS3.18 8.3.4.4: the provider may return fewer results than match
        warnings.append(
            f'299 radnode "There are more than {cap} results: narrow the query or page '
            'with limit and offset"'
        )
    extra_headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return JSONResponse(answer, media_type=DICOM_JSON, headers=extra_headers)


def check_numbers(params: list[tuple[str, str]]) -> None:
    """QueryError for a number the index cannot hold: ``limit``, ``offset`` and integer
    matching keys (IS, US, UL, SS, SL) beyond 32 bits (PS3.5 6.2: the IS range)."""
    for name, value in params:
        lname = name.lower()
        if lname in ("limit", "offset"):
            items = [value]
        elif lname in RESERVED:
            continue
        else:
            try:
                attr = INDEXED.get(resolve_keyword(name))
            except QueryError:
                continue  # parse() names it
            if attr is None or attr.vr not in ("IS", "US", "UL", "SS", "SL"):
                continue
            items = value.split("\\")
        for item in items:
            try:
                number = int(item)
            except ValueError:
                continue  # parse() names it
            if not INT_MIN <= number <= INT_MAX:
                raise QueryError(f"{name} must be an integer from {INT_MIN} to {INT_MAX}")


def _nest(item: dict[str, Any], path: str, value: Any) -> None:
    """``Sequence.Keyword`` values go into the sequence's single item (when there is a value)."""
    if value is None or value == "":
        return
    parent, child = path.split(".")
    tag, entry = element(child, value)
    sequence = item.setdefault(tag_hex(parent), {"vr": "SQ", "Value": [{}]})
    sequence["Value"][0][tag] = entry


def _aggregates(conn: Any, level: Level, rows: list[Any]) -> dict[str, dict[str, Any]]:
    """Computed attributes of the page's rows: ModalitiesInStudy and the counts."""
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


def _value(keyword: str, row: Any, extra: dict[str, dict[str, Any]]) -> Any:
    attr = INDEXED[keyword]
    if attr.column is not None:
        return row[attr.column]
    key = row[series.c.series_uid] if attr.level == "series" else row[studies.c.study_uid]
    return extra.get(key, {}).get(keyword)


def _retrieve_url(level: Level, row: Any, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{row[studies.c.study_uid]}"
    if level != "study":
        url += f"/series/{row[series.c.series_uid]}"
    if level == "instance":
        url += f"/instances/{row[instances.c.sop_instance_uid]}"
    return dict([element("RetrieveURL", url, "UR")])


def _from_file(
    node: Node, headers: InstanceHeaders, level: Level, row: Any, keywords: list[str]
) -> dict[str, Any]:
    """Attributes outside the index, from the header of the level's (first) instance."""
    if level == "instance":
        path, version = row[instances.c.path], row[instances.c.received_at]
    else:
        column = studies.c.study_uid if level == "study" else series.c.series_uid
        key_column = instances.c.study_uid if level == "study" else instances.c.series_uid
        with node.index.engine.connect() as conn:
            first = conn.execute(
                select(instances.c.path, instances.c.received_at)
                .where(key_column == row[column])
                .limit(1)
            ).first()
        if first is None:
            return {}
        path, version = first
    ds = headers.dataset(node.store.path_of(path), version)
    out: dict[str, Any] = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        if tag in ds:
            out[tag_hex(keyword)] = _json(ds, tag)
        else:
            out[tag_hex(keyword)] = {"vr": str(dictionary_VR(tag))}
    return out


def _json(ds: Any, tag: int) -> dict[str, Any]:
    result: dict[str, Any] = ds[tag].to_json_dict(
        bulk_data_element_handler=None, bulk_data_threshold=1e9
    )
    return result


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, node: NodeDep, headers: HeadersDep) -> JSONResponse:
    return _search(request, node, headers, "study")


@router.get("/series", summary="Search for series")
def search_series(request: Request, node: NodeDep, headers: HeadersDep) -> JSONResponse:
    return _search(request, node, headers, "series")


@router.get("/instances", summary="Search for instances")
def search_instances(request: Request, node: NodeDep, headers: HeadersDep) -> JSONResponse:
    return _search(request, node, headers, "instance")


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_study_series(
    request: Request, node: NodeDep, headers: HeadersDep, study: str
) -> JSONResponse:
    return _search(request, node, headers, "series", checked_uid(study, "Study Instance UID"))


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(
    request: Request, node: NodeDep, headers: HeadersDep, study: str
) -> JSONResponse:
    return _search(request, node, headers, "instance", checked_uid(study, "Study Instance UID"))


@router.get(
    "/studies/{study}/series/{series_uid}/instances", summary="Search for instances of a series"
)
def search_series_instances(
    request: Request, node: NodeDep, headers: HeadersDep, study: str, series_uid: str
) -> JSONResponse:
    return _search(
        request,
        node,
        headers,
        "instance",
        checked_uid(study, "Study Instance UID"),
        checked_uid(series_uid, "Series Instance UID"),
    )
