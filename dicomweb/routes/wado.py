"""WADO-RS: retrieve instances, metadata, frames, bulk data and rendered images (PS3.18 10.4).

Instances go out as the stored Part 10 bytes, file by file, in
``multipart/related; type="application/dicom"``: a study is streamed, never
loaded whole. Without a ``transfer-syntax`` parameter, or with ``*``, or with
the stored one, the stored bytes are sent unchanged; an uncompressed stored
instance can be sent in the other uncompressed little-endian syntax; any
other request is 406 (no transcoding to or from compressed syntaxes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.encaps import generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID
from sqlalchemy import select

from dicomweb.auditing import requester, study_refs
from dicomweb.deps import HeadersDep, NodeDep, checked_uid, dicomweb_base, require_read
from dicomweb.dicomjson import DICOM_JSON, parse_media_type
from dicomweb.headers import InstanceHeaders, read_header
from dicomweb.multipart import new_boundary, related_content_type, stream_parts
from dicomweb.render import RenderError, decode_frame, parse_viewport, parse_window, render
from radnode_core.index import instances
from radnode_core.node import Node
from radnode_core.store import ZERO_PREAMBLE

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS"], dependencies=[require_read])

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
_NATIVE = frozenset({EXPLICIT_LE, IMPLICIT_LE})
_CHUNK = 1024 * 1024
_BATCH = 4 * 1024 * 1024  # bytes per write of a streamed retrieve
_BASE = "@@radnode-base@@"  # placeholder for the request's base URL in cached metadata

# Media types of compressed frames (PS3.18 Table 8.7.3-2).
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


# -- index look-ups ----------------------------------------------------------------------


def _rows(
    node: Node, study: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[dict[str, Any]]:
    """Indexed instances of a study / series / instance, in order; 404 when none."""
    study = checked_uid(study, "Study Instance UID")
    stmt = select(instances).where(instances.c.study_uid == study)
    if series_uid is not None:
        stmt = stmt.where(instances.c.series_uid == checked_uid(series_uid, "Series Instance UID"))
    if sop_uid is not None:
        stmt = stmt.where(instances.c.sop_instance_uid == checked_uid(sop_uid, "SOP Instance UID"))
    stmt = stmt.order_by(instances.c.series_uid, instances.c.instance_number, instances.c.path)
    with node.index.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study, series or instance")
    return rows


# -- retrieve ----------------------------------------------------------------------------


def _accepted(request: Request, default_type: str) -> list[tuple[str, str | None]]:
    """(part type, transfer syntax or None) pairs the client accepts, in its order."""
    header = request.headers.get("accept", "")
    out: list[tuple[str, str | None]] = []
    for item in filter(None, (i.strip() for i in header.split(","))):
        media, params = parse_media_type(item)
        if media in ("*/*", "multipart/*"):
            out.append((default_type, params.get("transfer-syntax")))
        elif media == "multipart/related":
            out.append((params.get("type", default_type).lower(), params.get("transfer-syntax")))
        else:
            out.append((media, params.get("transfer-syntax")))
    return out or [(default_type, None)]


def _instance_syntax(request: Request, rows: list[dict[str, Any]]) -> str | None:
    """The transfer syntax to send (None: as stored); 406 when nothing acceptable."""
    for part_type, syntax in _accepted(request, "application/dicom"):
        if part_type not in ("application/dicom", "*/*", "*"):
            continue
        if syntax in (None, "*"):
            return None
        stored = {r["transfer_syntax_uid"] for r in rows}
        if stored == {syntax}:
            return None
        if syntax in _NATIVE and stored <= _NATIVE:
            return syntax
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE,
        'supported: multipart/related; type="application/dicom" with transfer-syntax=* '
        "(as stored) or an uncompressed little-endian syntax for uncompressed instances",
    )


def _file_chunks(node: Node, path: str) -> Iterator[bytes]:
    with node.store.path_of(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _transcoded(node: Node, path: str, syntax: str) -> Iterator[bytes]:
    ds = dcmread(node.store.path_of(path))
    if ds.file_meta.TransferSyntaxUID != syntax:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.preamble = ZERO_PREAMBLE  # PS3.10 7.1; never a polyglot header (PE/ELF) going out
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    yield buf.getvalue()


def _audit(request: Request, node: Node, rows: list[dict[str, Any]]) -> None:
    """110104 DICOM Instances Transferred (read), one message per request (PS3.15 A.5.3)."""
    user, address = requester(request)
    node.audit.instances_retrieved(study_refs(rows), user=user, address=address)


def _retrieve(request: Request, node: Node, rows: list[dict[str, Any]]) -> StreamingResponse:
    syntax = _instance_syntax(request, rows)
    _audit(request, node, rows)
    boundary = new_boundary()

    def parts() -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        for row in rows:
            ts = syntax or row["transfer_syntax_uid"]
            headers = {"Content-Type": f"application/dicom; transfer-syntax={ts}"}
            if syntax is None or syntax == row["transfer_syntax_uid"]:
                yield headers, _file_chunks(node, row["path"])
            else:
                yield headers, _transcoded(node, row["path"], syntax)

    params = {"transfer_syntax": syntax} if syntax else {}
    return StreamingResponse(
        stream_parts(parts(), boundary, batch_bytes=_BATCH),
        media_type=related_content_type("application/dicom", boundary, **params),
    )


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(request: Request, node: NodeDep, study: str) -> StreamingResponse:
    return _retrieve(request, node, _rows(node, study))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(request: Request, node: NodeDep, study: str, series: str) -> StreamingResponse:
    return _retrieve(request, node, _rows(node, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(
    request: Request, node: NodeDep, study: str, series: str, instance: str
) -> StreamingResponse:
    return _retrieve(request, node, _rows(node, study, series, instance))


# -- metadata ----------------------------------------------------------------------------


def _instance_url(row: dict[str, Any]) -> str:
    return (
        f"{_BASE}/studies/{row['study_uid']}/series/{row['series_uid']}"
        f"/instances/{row['sop_instance_uid']}"
    )


def _metadata_json(node: Node, headers: InstanceHeaders, row: dict[str, Any]) -> str:
    """One instance's metadata as DICOM JSON text, bulk data as BulkDataURI (cached)."""
    cache = headers.metadata
    key = (row["path"], float(row["received_at"]))
    cached = cache.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    url = _instance_url(row)
    ds = read_header(node.store.path_of(row["path"]))

    def bulk(elem: DataElement) -> str:
        return f"{url}/bulkdata/{elem.tag:08X}"

    body = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)
    if row.get("rows") is not None:  # an image: its Pixel Data was not read
        compressed = row["transfer_syntax_uid"] not in _NATIVE
        vr = "OB" if compressed or (row.get("bits_allocated") or 16) <= 8 else "OW"
        body["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    text = json.dumps(body, separators=(",", ":"))
    cache.put(key, text)
    return text


def _metadata(
    request: Request, node: Node, headers: InstanceHeaders, rows: list[dict[str, Any]]
) -> Response:
    base = dicomweb_base(request)
    text = "[" + ",".join(_metadata_json(node, headers, row) for row in rows) + "]"
    _audit(request, node, rows)
    return Response(text.replace(_BASE, base), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="Metadata of a study")
def study_metadata(request: Request, node: NodeDep, headers: HeadersDep, study: str) -> Response:
    return _metadata(request, node, headers, _rows(node, study))


@router.get("/studies/{study}/series/{series}/metadata", summary="Metadata of a series")
def series_metadata(
    request: Request, node: NodeDep, headers: HeadersDep, study: str, series: str
) -> Response:
    return _metadata(request, node, headers, _rows(node, study, series))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Metadata of an instance",
)
def instance_metadata(
    request: Request, node: NodeDep, headers: HeadersDep, study: str, series: str, instance: str
) -> Response:
    return _metadata(request, node, headers, _rows(node, study, series, instance))


# -- frames and bulk data ----------------------------------------------------------------


def _frame_numbers(frames: str, limit: int) -> list[int]:
    """The distinct frame numbers of a frame list, in the order first named (PS3.18 8.3.3.1):
    a number named again adds nothing to the answer. 400 beyond ``limit`` distinct ones."""
    numbers: dict[int, None] = {}
    for item in frames.split(","):
        if not item.isdigit() or len(item) > 10:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "frame list must be 1,2,...")
        number = int(item)
        if number < 1:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "frame numbers start at 1")
        numbers[number] = None
        if len(numbers) > limit:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"more than {limit} frames in one request (max_frames_per_request)",
            )
    return list(numbers)


def _native_frames(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    data = memoryview(ds.PixelData)
    for n in numbers:
        yield bytes(data[(n - 1) * size : n * size])


def _decoded_frames(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    """Decoded frames one at a time; the first is decoded before the answer starts, so a
    frame that cannot be decoded is a 400, not a cut stream."""
    try:
        first = decode_frame(ds, numbers[0]).tobytes()
    except RenderError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc

    def frames() -> Iterator[bytes]:
        yield first
        for n in numbers[1:]:
            yield decode_frame(ds, n).tobytes()

    return frames()


def _frames_payload(
    request: Request, ds: Dataset, numbers: list[int]
) -> tuple[Iterator[bytes], str, str]:
    """Frame bytes (produced one at a time), their part media type and transfer syntax."""
    stored = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if max(numbers) > count:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the instance has {count} frame(s)")
    accepted = _accepted(request, "application/octet-stream")
    if stored in _NATIVE:
        if any(t in ("application/octet-stream", "*/*", "*") for t, _ in accepted):
            return _native_frames(ds, numbers), "application/octet-stream", EXPLICIT_LE
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, "uncompressed frames only")
    media = _FRAME_MEDIA.get(stored, "application/octet-stream")
    for part_type, syntax in accepted:
        if syntax in ("*", stored) or (part_type == media and syntax is None):
            frames = list(generate_frames(ds.PixelData, number_of_frames=count))
            return (frames[n - 1] for n in numbers), media, stored
    if any(t == "application/octet-stream" for t, _ in accepted):
        return _decoded_frames(ds, numbers), "application/octet-stream", EXPLICIT_LE
    raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"frames are available as {media}")


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="Frames of an instance",
)
def retrieve_frames(
    request: Request, node: NodeDep, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames, node.settings.max_frames_per_request)
    row = _rows(node, study, series, instance)[0]
    ds = dcmread(node.store.path_of(row["path"]))
    if "PixelData" not in ds:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the instance has no pixel data")
    payload, media, syntax = _frames_payload(request, ds, numbers)
    boundary = new_boundary()
    headers = {"Content-Type": f"{media}; transfer-syntax={syntax}"}
    return StreamingResponse(
        stream_parts(((headers, [frame]) for frame in payload), boundary, batch_bytes=_BATCH),
        media_type=related_content_type(media, boundary, transfer_syntax=syntax),
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
    summary="Bulk data of an instance (a top-level element, e.g. 7FE00010)",
)
def retrieve_bulkdata(node: NodeDep, study: str, series: str, instance: str, tag: str) -> Response:
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "tag must be 8 hex digits")
    number = int(tag, 16)
    row = _rows(node, study, series, instance)[0]
    ds = dcmread(node.store.path_of(row["path"]))
    if number not in ds or not isinstance(ds[number].value, bytes):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no bulk data element {tag}")
    boundary = new_boundary()
    body = b"".join(
        stream_parts([({"Content-Type": "application/octet-stream"}, [ds[number].value])], boundary)
    )
    return Response(body, media_type=related_content_type("application/octet-stream", boundary))


# -- rendered and thumbnails -------------------------------------------------------------


def _render_media(request: Request) -> str:
    for item in request.headers.get("accept", "image/jpeg").split(","):
        media, _ = parse_media_type(item)
        if media in ("image/jpeg", "image/png"):
            return media
        if media in ("*/*", "image/*", ""):
            return "image/jpeg"
    raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, "rendered as image/jpeg or image/png")


def _rendered(
    request: Request, node: Node, row: dict[str, Any], frame: int, default_size: int | None
) -> Response:
    media = _render_media(request)
    try:
        window = parse_window(request.query_params.get("window"))
        viewport = parse_viewport(request.query_params.get("viewport"), default_size)
        ds = dcmread(node.store.path_of(row["path"]))
        if "PixelData" not in ds:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the instance has no pixel data")
        image = render(ds, frame, window=window, viewport=viewport, media_type=media)
    except RenderError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    return Response(image, media_type=media)


def _middle(rows: list[dict[str, Any]]) -> dict[str, Any]:
    images = [r for r in rows if r.get("rows")] or rows
    return images[len(images) // 2]


def _rendered_many(request: Request, node: Node, rows: list[dict[str, Any]]) -> Response:
    """Study / series rendered: each image instance's first frame, one part each."""
    media = _render_media(request)
    try:
        window = parse_window(request.query_params.get("window"))
        viewport = parse_viewport(request.query_params.get("viewport"), None)
    except RenderError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc

    def images() -> Iterator[tuple[dict[str, str], list[bytes]]]:
        for row in rows:
            if not row.get("rows"):
                continue
            ds = dcmread(node.store.path_of(row["path"]))
            try:
                data = render(ds, 1, window=window, viewport=viewport, media_type=media)
            except RenderError:
                continue  # headers are sent: an image that cannot be rendered is left out
            yield {"Content-Type": media}, [data]

    boundary = new_boundary()
    return StreamingResponse(
        stream_parts(images(), boundary), media_type=related_content_type(media, boundary)
    )


@router.get("/studies/{study}/rendered", summary="Rendered study (first frame of each image)")
def rendered_study(request: Request, node: NodeDep, study: str) -> Response:
    return _rendered_many(request, node, _rows(node, study))


@router.get(
    "/studies/{study}/series/{series}/rendered",
    summary="Rendered series (first frame of each image)",
)
def rendered_series(request: Request, node: NodeDep, study: str, series: str) -> Response:
    return _rendered_many(request, node, _rows(node, study, series))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="Rendered instance (first frame)",
)
def rendered_instance(
    request: Request, node: NodeDep, study: str, series: str, instance: str
) -> Response:
    return _rendered(request, node, _rows(node, study, series, instance)[0], 1, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="Rendered frame",
)
def rendered_frame(
    request: Request, node: NodeDep, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames, node.settings.max_frames_per_request)
    return _rendered(request, node, _rows(node, study, series, instance)[0], numbers[0], None)


@router.get("/studies/{study}/thumbnail", summary="Thumbnail of a study")
def study_thumbnail(request: Request, node: NodeDep, study: str) -> Response:
    return _rendered(request, node, _middle(_rows(node, study)), 1, 128)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Thumbnail of a series")
def series_thumbnail(request: Request, node: NodeDep, study: str, series: str) -> Response:
    return _rendered(request, node, _middle(_rows(node, study, series)), 1, 128)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="Thumbnail of an instance",
)
def instance_thumbnail(
    request: Request, node: NodeDep, study: str, series: str, instance: str
) -> Response:
    return _rendered(request, node, _rows(node, study, series, instance)[0], 1, 128)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
    summary="Thumbnail of a frame",
)
def frame_thumbnail(
    request: Request, node: NodeDep, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames, node.settings.max_frames_per_request)
    return _rendered(request, node, _rows(node, study, series, instance)[0], numbers[0], 128)
