"""Seeded, bounded fuzzing of both edges: HTTP (query parameters, path segments, headers,
multipart bodies) against `radnode api` with authentication on, and DICOM (PDU headers,
item lengths, AE titles, C-STOREs with values out of range) against `radnode scp`.

What must hold, for every case: no HTTP 5xx, no C-STORE answered 0xA700 or 0xC211 (an
internal error; bad input gets 0xA900, 0xC000 or a warning), every DICOM connection
answered (A-ASSOCIATE-AC/RJ, A-ABORT) or closed within the association request deadline
and a little; between batches /livez answers and a C-ECHO succeeds; the RSS of both
servers grows by less than 25 % from after a warm-up to the end.

Sizes: ``scale(short, full)`` (relfixtures). Every case comes from ``random.Random(SEED)``:
a failure names its case number and kind, and the same seed replays it.
"""

from __future__ import annotations

import json
import random
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pydicom import Dataset, FileMetaDataset, config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.radnode_process import RadnodeProcess
from tests.support.reliability import record, rss_kib, scale

SEED = 20261130
HTTP_CASES = scale(400, 4000)
PDU_CASES = scale(120, 2000)
STORE_CASES = scale(60, 600)
BATCH = 50
DEADLINE_S = 1.0
TOKEN = "fuzz-admin-token-0123456789"
SC = "1.2.840.10008.5.1.4.1.1.7"
REFUSALS = {0x0000, 0xA900, 0xC000, 0xB000, 0xB006, 0xB007}
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"


def _env() -> dict[str, str]:
    return {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps({TOKEN: "admin"}),
        "RADNODE_FSYNC": "false",
        "RADNODE_LOG_LEVEL": "WARNING",
        "RADNODE_ASSOCIATION_REQUEST_TIMEOUT_S": str(DEADLINE_S),
        "RADNODE_MAX_STOW_PARTS": "40",
        "RADNODE_MAX_FRAMES_PER_REQUEST": "64",
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RadnodeProcess, ...]]:
    root = tmp_path_factory.mktemp("fuzz")
    api = RadnodeProcess(root / "api", "api", env=_env()).start()
    scp = RadnodeProcess(root / "scp", "scp", env=_env()).start()
    yield api, scp
    api.stop()
    scp.stop()


# -- data ---------------------------------------------------------------------------------


def _instance(rng: random.Random, frames: int = 1, **raw: tuple[str, object]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Fuzz^Patient"
    ds.PatientID = "FUZZ"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(rng.randrange(256) for _ in range(16 * frames))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(SC)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, (vr, value) in raw.items():  # as bytes, unchecked and unconverted
        data = str(value).encode("latin-1")
        data += b" " if len(data) % 2 else b""
        number = tag_for_keyword(keyword)
        assert number is not None, keyword
        tag = Tag(number)
        ds._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)
    return ds


def _part10(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    with config.disable_value_validation():
        dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


BOUNDARY = "fuzzboundary"


def _stow_body(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@dataclass
class Known:
    """UIDs of instances the fuzzer stored first, so paths can name real things."""

    study: str
    series: str
    instance: str


# -- HTTP cases ---------------------------------------------------------------------------

KEYWORDS = [
    "PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "SeriesNumber",
    "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "Modality", "00100010", "0020000D",
    "RequestAttributesSequence.ScheduledProcedureStepID", "includefield", "limit", "offset",
    "fuzzymatching", "0010001", "NoSuchKeyword", "a.b.c", "StudyDate.PatientName", "",
]  # fmt: skip


def _value(rng: random.Random) -> str:
    kind = rng.randrange(14)
    if kind == 0:
        return ""
    if kind == 1:
        return str(rng.choice([-1, 0, 1, 2**31, 2**63, 2**64, 10**19, -(10**20), 10**400]))
    if kind == 2:
        return rng.choice(["nan", "inf", "-inf", "1e400", "0x10", "1_000", " 7", "7 ", "+3"])
    if kind == 3:
        return rng.choice(["*", "?", "**", "a*b?c", "[a-z]", "%", "_", "\\", "\\\\", ","])
    if kind == 4:
        return rng.choice(["20240101-20230101", "2024-", "-", "--", "2024010-", "99999999"])
    if kind == 5:
        return "x" * rng.choice([64, 1024, 1025, 4000])
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind == 7:
        return "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 8)))
    if kind == 8:
        return "\\".join(str(rng.randrange(-5, 10**12)) for _ in range(rng.randrange(1, 50)))
    if kind == 9:
        return ",".join(rng.choice(KEYWORDS) or "all" for _ in range(rng.randrange(1, 20)))
    if kind == 10:
        return rng.choice(["true", "false", "TRUE", "yes", "1"])
    if kind == 11:
        return ".".join(str(rng.randrange(0, 10**6)) for _ in range(rng.randrange(1, 30)))
    if kind == 12:
        return rng.choice(["CT", "CT\\MR", "CT,MR", "ct", "SR\\"])
    return "".join(rng.choice("0123456789.-^=%&+ ") for _ in range(rng.randrange(1, 30)))


def _uid(rng: random.Random, real: str) -> str:
    return rng.choice(
        [
            real,
            real,
            real + "\n",
            real + "\x00",
            real + ".",
            "." + real,
            real.replace(".", "..", 1),
            "9" * rng.choice([64, 65, 200]),
            "../../etc/passwd",
            "1.2.3/4",
            "\u0661.\u0662",
            "",
            " ",
            "%2e%2e",
            _value(rng),
        ]
    )


def _frames(rng: random.Random) -> str:
    return rng.choice(
        [
            "1",
            "1,1,1",
            ",".join(["1"] * rng.randrange(1, 3000)),
            ",".join(str(n) for n in range(1, rng.randrange(2, 200))),
            "0",
            "-1",
            "99999999999",
            "1,a",
            "",
            "1,,2",
            "1.5",
            str(2**64),
            "2,1,3",
        ]
    )


def _path(rng: random.Random, k: Known) -> str:
    def seg(value: str) -> str:
        return quote(value, safe="")

    study, series, inst = (seg(_uid(rng, u)) for u in (k.study, k.series, k.instance))
    one = f"/dicom-web/studies/{study}/series/{series}/instances/{inst}"
    return rng.choice(
        [
            "/dicom-web/studies",
            "/dicom-web/series",
            "/dicom-web/instances",
            f"/dicom-web/studies/{study}/series",
            f"/dicom-web/studies/{study}/instances",
            f"/dicom-web/studies/{study}/series/{series}/instances",
            f"/dicom-web/studies/{study}",
            f"/dicom-web/studies/{study}/metadata",
            f"/dicom-web/studies/{study}/series/{series}/metadata",
            f"{one}/metadata",
            one,
            f"{one}/frames/{seg(_frames(rng))}",
            f"{one}/frames/{seg(_frames(rng))}/rendered",
            f"{one}/rendered",
            f"{one}/thumbnail",
            f"/dicom-web/studies/{study}/rendered",
            f"/dicom-web/studies/{study}/thumbnail",
            f"{one}/bulkdata/{seg(rng.choice(['7FE00010', '00100010', 'zz', '', '1' * 9]))}",
            "/api/worklist",
            "/api/results",
            "/api/retraining/runs",
            f"/api/retraining/runs/{seg(_value(rng))}",
            f"/api/studies/{study}/result",
            f"/api/studies/{study}/feedback",
            "/api/outbox",
            "/api/models",
            "/api/whoami",
            f"/{seg(_value(rng))}",
            f"/dicom-web/{seg(_value(rng))}/{seg(_value(rng))}",
            "/ui/" + seg(_value(rng)),
        ]
    )


def _params(rng: random.Random) -> list[tuple[str, str]]:
    names = KEYWORDS + ["window", "viewport", "status", "label", "reviewed", "date_from",
                        "min_score", "study_uid", "state"]  # fmt: skip
    return [(rng.choice(names), _value(rng)) for _ in range(rng.randrange(0, 6))]


def _headers(rng: random.Random) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    roll = rng.randrange(10)
    if roll == 0:
        headers["Authorization"] = rng.choice(
            ["Bearer", "Bearer ", "Basic abc", "Bearer a.b.c", "Bearer " + "x" * 5000, "bearer x"]
        )
    elif roll == 1:
        del headers["Authorization"]
    accept = rng.choice(
        [
            None,
            "*/*",
            "application/dicom+json",
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
            'multipart/related; type="application/octet-stream"',
            'multipart/related; type="image/jpeg"',
            "image/png",
            "image/*",
            "text/html",
            'multipart/related; type="',
            ";;;,,,",
            _value(rng)[:200],
        ]
    )
    if accept is not None and accept.isascii() and accept.isprintable():
        headers["Accept"] = accept
    if rng.random() < 0.2:
        headers["Host"] = rng.choice(["evil.example", "", "[::1]", "a" * 300])
    if rng.random() < 0.2:
        headers["X-Forwarded-Proto"] = rng.choice(["https", "gopher", ""])
    return headers


def _multipart(rng: random.Random, valid: bytes) -> tuple[bytes, str]:
    boundary = rng.choice([BOUNDARY, BOUNDARY, "", "x" * 201, "a b", '"q"', "--"])
    parts = []
    for _ in range(rng.randrange(0, 45)):
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(valid)
        elif kind == 1:
            parts.append(valid[: rng.randrange(len(valid))])
        elif kind == 2:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))))
        elif kind == 3:
            cut = rng.randrange(132, len(valid))
            parts.append(valid[:cut] + bytes([rng.randrange(256)]) + valid[cut + 1 :])
        elif kind == 4:
            parts.append(b"")
        else:
            parts.append(valid + b"\r\n--" + boundary.encode())
    body = _stow_body(parts, boundary or BOUNDARY)
    if rng.random() < 0.2:
        body = body[: rng.randrange(len(body) + 1)]
    if rng.random() < 0.1:
        body = body.replace(b"\r\n", b"\n")
    content_type = rng.choice(
        [
            f'multipart/related; type="application/dicom"; boundary={boundary}',
            f"multipart/related; boundary={boundary}",
            f'multipart/related; type="application/dicom+json"; boundary={boundary}',
            "multipart/related",
            "application/dicom",
            f'multipart/related; type="application/dicom"; boundary="{boundary}"',
        ]
    )
    return body, content_type


def _json_body(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b'{"decision": "confirm"}',
            b'{"decision": "relabel", "label": "lesion"}',
            b'{"decision": 1}',
            b"[" * rng.randrange(1, 40000) + b"]" * rng.randrange(0, 10),
            b'{"decision": "confirm", "comment": "' + b"x" * rng.randrange(0, 70000) + b'"}',
            b"\xff\xfe\x00",
            b"",
            b'{"orthanc_id": "abc", "study_uid": "1.2"}',
            json.dumps({"decision": "confirm", "sr_sop_instance_uid": _value(rng)}).encode(),
        ]
    )


def _raw_http(rng: random.Random, port: int, path: str) -> int:
    """A hand-written request with a broken line, header or length: the status or 0 (closed)."""
    lines = rng.choice(
        [
            [f"GET {path} HTTP/1.1", "Host: x"],
            [f"GET {path} HTTP/1.0"],
            [f"GET {path} HTTP/9.9", "Host: x"],
            ["GET  HTTP/1.1", "Host: x"],
            [f"GET {path} HTTP/1.1", "Host: x", "Bad Header: y"],
            [f"GET {path} HTTP/1.1", "Host: x", "X: " + "y" * 70000],
            [f"POST {path} HTTP/1.1", "Host: x", "Content-Length: -1"],
            [f"POST {path} HTTP/1.1", "Host: x", "Content-Length: 5", "Content-Length: 6"],
            [f"POST {path} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked"],
            [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {TOKEN}",
             "Transfer-Encoding: chunked"],
            [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {TOKEN}",
             "Content-Length: 3"],
        ]
    )  # fmt: skip
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    body = rng.choice([b"", b"abc", b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        try:
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(64)
        except OSError:
            return 0
    if not answer.startswith(b"HTTP/1."):
        return 0
    return int(answer[9:12])


def http_case(
    rng: random.Random, client: httpx.Client, base: str, k: Known, valid: bytes
) -> tuple[str, int]:
    """(kind, HTTP status); status 0: the connection ended without an answer, as it may
    when the server refuses a request before its body is sent whole."""
    kind = rng.choice(["query", "query", "path", "path", "headers", "stow", "json", "raw"])
    try:
        return kind, _http_case(kind, rng, client, base, k, valid)
    except httpx.TransportError:
        return kind, 0


def _http_case(
    kind: str, rng: random.Random, client: httpx.Client, base: str, k: Known, valid: bytes
) -> int:
    port = int(base.rsplit(":", 1)[1])
    if kind == "raw":
        return _raw_http(rng, port, _path(rng, k))
    headers = _headers(rng)
    if kind == "stow":
        body, content_type = _multipart(rng, valid)
        url = base + rng.choice(["/dicom-web/studies", f"/dicom-web/studies/{k.study}"])
        headers["Content-Type"] = content_type
        return client.post(url, content=body, headers=headers).status_code
    if kind == "json":
        url = base + rng.choice(
            [f"/api/studies/{k.study}/feedback", "/api/pacs/none/stable-studies", "/api/whoami"]
        )
        headers["Content-Type"] = rng.choice(["application/json", "text/plain", "a/b; c=d"])
        return client.post(url, content=_json_body(rng), headers=headers).status_code
    url = base + _path(rng, k)
    params: list[tuple[str, str | int | float | bool | None]] = (
        list(_params(rng)) if kind != "path" or rng.random() < 0.3 else []
    )
    return client.get(url, params=params, headers=headers).status_code


# -- DICOM cases --------------------------------------------------------------------------


def _item(item_type: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return bytes([item_type, 0]) + (size & 0xFFFF).to_bytes(2, "big") + payload


def _ae(title: bytes) -> bytes:
    return title[:16].ljust(16, b" ")


def associate_rq(rng: random.Random) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with one field or length bent (or none)."""
    mutate = rng.randrange(12)
    called = _ae(b"RADNODE")
    calling = _ae(b"FUZZER")
    if mutate == 0:
        calling = bytes(rng.randrange(256) for _ in range(16))
    elif mutate == 1:
        called = bytes(rng.randrange(256) for _ in range(16))
    elif mutate == 2:
        calling = b" " * 16
    app = _item(0x10, APP_CONTEXT)
    abstract = _item(0x30, SC.encode())
    transfer = _item(0x40, ExplicitVRLittleEndian.encode())
    if mutate == 3:
        abstract = _item(0x30, SC.encode(), rng.choice([0, 1, 200, 0xFFFF]))
    if mutate == 4:
        transfer = _item(0x40, b"\x00" * rng.randrange(0, 80))
    context = _item(0x20, bytes([1, 0, 0, 0]) + abstract + transfer)
    if mutate == 5:
        context = _item(0x20, bytes([rng.randrange(256), 0, 0, 0]) + abstract + transfer,
                        rng.choice([0, 3, 5000, 0xFFFF]))  # fmt: skip
    max_length = _item(0x51, (16384).to_bytes(4, "big"))
    if mutate == 6:
        max_length = _item(0x51, (0).to_bytes(4, "big"), rng.choice([0, 2, 3, 9]))
    user = _item(0x50, max_length)
    if mutate == 7:
        user = _item(0x50, max_length + bytes(rng.randrange(256) for _ in range(40)))
    items = app + context + user
    if mutate == 8:
        items = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    body = (1).to_bytes(2, "big") + b"\x00\x00" + called + calling + b"\x00" * 32 + items
    length = len(body)
    if mutate == 9:
        length = rng.choice([0, 1, 67, length - 1, length + 1, length + 1000, 0xFFFFFFFF])
    pdu_type = 0x01
    if mutate == 10:
        pdu_type = rng.choice([0x00, 0x02, 0x04, 0x05, 0x07, 0x08, 0xFF])
    pdu = bytes([pdu_type, 0]) + length.to_bytes(4, "big") + body
    if mutate == 11:
        pdu = pdu[: rng.randrange(0, len(pdu))]
    return pdu


def pdu_case(port: int, source: str, pdu: bytes) -> tuple[str, float]:
    """Send one PDU and wait: (what came back, seconds until then)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
        try:
            s.sendall(pdu)
        except OSError:
            return "closed", time.monotonic() - started
        limit = started + DEADLINE_S + 5
        while time.monotonic() < limit:
            readable, _, _ = select.select([s], [], [], 0.1)
            if not readable:
                continue
            try:
                data = s.recv(6)
            except OSError:
                return "closed", time.monotonic() - started
            if not data:
                return "closed", time.monotonic() - started
            answer = {0x02: "AC", 0x03: "RJ", 0x07: "abort"}.get(data[0], f"pdu-{data[0]:02x}")
            if answer == "AC":  # release what was accepted
                s.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
            return answer, time.monotonic() - started
    return "no answer", time.monotonic() - started


def _store_statuses(port: int, files: list[Path]) -> list[int]:
    """The C-STORE status of each file (its bytes as they are); -1: no answer (the
    association is then opened again for the next file)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(SC, ExplicitVRLittleEndian)
    statuses = []
    assoc = None
    try:
        for path in files:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
                assert assoc.is_established
            rsp = assoc.send_c_store(path)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses


def store_case(rng: random.Random, directory: Path, number: int) -> Path:
    """An instance with one attribute out of range or malformed (still a well-formed dataset)."""
    keyword, vr, value = rng.choice(
        [
            ("InstanceNumber", "IS", str(rng.choice([2**31, 2**63, 10**19, -(10**19)]))),
            ("SeriesNumber", "IS", "9" * rng.randrange(10, 25)),
            ("NumberOfFrames", "IS", "9" * rng.randrange(10, 25)),
            ("InstanceNumber", "IS", rng.choice(["1.5", "abc", " ", "+-1", "1e3"])),
            ("StudyDate", "DA", rng.choice(["2024", "99999999", "20241301", "x" * 20])),
            ("StudyTime", "TM", rng.choice(["25", "999999.9999999", "ab"])),
            ("PatientName", "PN", rng.choice(["A=B=C=D", "x" * 200, "^^^^^^", "\\"])),
            ("AccessionNumber", "SH", "A" * rng.randrange(17, 200)),
            ("Modality", "CS", rng.choice(["ct", "X" * 40, ""])),
            ("RescaleSlope", "DS", rng.choice(["nan", "inf", "1e400", "--1"])),
        ]
    )
    ds = _instance(rng, 1, **{keyword: (vr, value)})
    path = directory / f"{number}-{keyword}.dcm"
    path.write_bytes(_part10(ds))
    return path


# -- the test -----------------------------------------------------------------------------


def _alive(api: RadnodeProcess, scp: RadnodeProcess) -> float:
    """/livez and a C-ECHO answer; returns the slower of the two, seconds."""
    started = time.monotonic()
    assert httpx.get(f"http://127.0.0.1:{api.http_port}/livez", timeout=5).status_code == 200
    livez = time.monotonic() - started
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    ae.add_requested_context(Verification)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RADNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return max(livez, time.monotonic() - started)


@dataclass
class Tally:
    """What one run of the three parts saw."""

    problems: list[str]
    http: Counter[int]
    kinds: Counter[str]
    answers: Counter[str]
    stores: Counter[int]
    seconds: dict[str, float]
    slowest_pdu: float = 0.0
    slowest_alive: float = 0.0


def run_parts(
    rng: random.Random,
    sizes: tuple[int, int, int],
    api: RadnodeProcess,
    scp: RadnodeProcess,
    known: Known,
    scratch: Path,
    check: Callable[[], float],
) -> Tally:
    """HTTP cases, then association requests, then C-STOREs; ``check`` between batches."""
    http_cases, pdu_cases, store_cases = sizes
    base = f"http://127.0.0.1:{api.http_port}"
    valid = _part10(_instance(rng))
    t = Tally([], Counter(), Counter(), Counter(), Counter(), {})

    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        for number in range(http_cases):
            kind, code = http_case(rng, client, base, known, valid)
            t.http[code] += 1
            t.kinds[kind] += 1
            if code >= 500:
                t.problems.append(f"HTTP case {number} ({kind}): {code}")
            if number % BATCH == BATCH - 1:
                t.slowest_alive = max(t.slowest_alive, check())
    t.seconds["http"] = time.monotonic() - started

    # Association requests, 8 at a time, each worker from its own loopback address.
    pdus = [associate_rq(rng) for _ in range(pdu_cases)]
    started = time.monotonic()
    for first in range(0, pdu_cases, BATCH):
        jobs = list(enumerate(pdus[first : first + BATCH], first))
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda j: pdu_case(scp.dicom_port, f"127.0.1.{j[0] % 8 + 1}", j[1]), jobs)
            )
        for (number, _), (answer, seconds) in zip(jobs, results, strict=True):
            t.answers[answer] += 1
            t.slowest_pdu = max(t.slowest_pdu, seconds)
            if answer == "no answer":
                t.problems.append(f"PDU case {number}: neither answered nor closed")
        t.slowest_alive = max(t.slowest_alive, check())
    t.seconds["pdu"] = time.monotonic() - started

    started = time.monotonic()
    for first in range(0, store_cases, BATCH):
        numbers = range(first, min(store_cases, first + BATCH))
        files = [store_case(rng, scratch, n) for n in numbers]
        for path, code in zip(files, _store_statuses(scp.dicom_port, files), strict=True):
            t.stores[code] += 1
            if code not in REFUSALS:
                t.problems.append(f"C-STORE {path.stem}: status {code:#06x}")
        t.slowest_alive = max(t.slowest_alive, check())
    t.seconds["store"] = time.monotonic() - started
    return t


def test_fuzz_http_and_dicom(servers: tuple[RadnodeProcess, ...], tmp_path: Path) -> None:
    api, scp = servers
    rng = random.Random(SEED)
    seeds = [_instance(rng, frames=4) for _ in range(2)]
    r = httpx.post(
        f"http://127.0.0.1:{api.http_port}/dicom-web/studies",
        content=_stow_body([_part10(ds) for ds in seeds]),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Authorization": f"Bearer {TOKEN}",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    known = Known(seeds[0].StudyInstanceUID, seeds[0].SeriesInstanceUID, seeds[0].SOPInstanceUID)

    def check() -> float:
        return _alive(api, scp)

    def rss() -> tuple[int, int]:
        assert api.proc is not None and scp.proc is not None
        return rss_kib(api.proc.pid), rss_kib(scp.proc.pid)

    (tmp_path / "warm").mkdir()
    warm = run_parts(random.Random(SEED + 1), (50, 25, 25), api, scp, known,
                     tmp_path / "warm", check)  # fmt: skip
    before = rss()
    t = run_parts(rng, (HTTP_CASES, PDU_CASES, STORE_CASES), api, scp, known, tmp_path, check)
    after = rss()

    growth = [(a - b) / b for a, b in zip(after, before, strict=True)]
    record(
        "fuzz",
        seed=SEED,
        http_cases=HTTP_CASES,
        http_kinds=dict(t.kinds),
        http_statuses={str(k): v for k, v in sorted(t.http.items())},
        pdu_cases=PDU_CASES,
        pdu_answers=dict(t.answers),
        pdu_slowest_s=round(t.slowest_pdu, 2),
        store_cases=STORE_CASES,
        store_statuses={f"0x{k:04X}": v for k, v in sorted(t.stores.items())},
        seconds={k: round(v, 1) for k, v in t.seconds.items()},
        slowest_alive_s=round(t.slowest_alive, 3),
        rss_api_mb=[round(before[0] / 1024, 1), round(after[0] / 1024, 1)],
        rss_scp_mb=[round(before[1] / 1024, 1), round(after[1] / 1024, 1)],
    )
    assert warm.problems + t.problems == [], (warm.problems + t.problems)[:20]
    assert t.slowest_pdu < DEADLINE_S + 5
    for name, value in zip(("api", "scp"), growth, strict=True):
        assert value < 0.25, f"{name} RSS grew {value:.0%}: {before} -> {after}"
    for node in (api, scp):
        assert _our_tracebacks(node) == []


def _our_tracebacks(node: RadnodeProcess) -> list[str]:
    """Log lines with a traceback, but pynetdicom's own about PDUs it cannot decode and its
    upper-layer thread ending on an event its state machine does not allow."""
    out = []
    for line in node.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not entry.get("exc"):
            continue
        if str(entry.get("logger", "")).startswith("pynetdicom"):
            continue
        if entry.get("logger") == "radnode_core.threads" and entry.get("error") == (
            "InvalidEventError"
        ):
            continue
        out.append(f"{entry.get('logger')}: {entry.get('msg')}")
    return out
