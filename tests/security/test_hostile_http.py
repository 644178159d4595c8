"""Hostile HTTP clients against `radnode api` with authentication on: each gap a probe found
is closed, checked over real connections.

Bodies are authenticated and bounded before they are read; STOW-RS part counts and WADO-RS
frame lists are bounded; numbers beyond the index's range are 400s (or, inside an instance,
stored as unknown); a SOP Instance UID stored in one study is refused in another; patient
data is not cached, pages cannot be framed, links do not follow the Host header; repeated
failed logins are audited and logged once per interval; a UID with a trailing newline is
not a UID.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.support.hostile import (
    ADMIN,
    MODALITY,
    RADIOLOGIST,
    VIEWER,
    auth,
    instance,
    log_lines,
    part10,
    raw_request,
    start,
    study_folders,
)
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import BOUNDARY, RELATED, audit_messages, event_id, stow_body

MAX_FRAMES = 16
MAX_JSON = 4096
MAX_PARTS = 50
INTERVAL_S = 4.0
BIG = "12345678901234567890"  # 20 digits: beyond 64 bits


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    node = start(
        tmp_path_factory.mktemp("hostile-http"),
        "api",
        RADNODE_MAX_FRAMES_PER_REQUEST=str(MAX_FRAMES),
        RADNODE_MAX_JSON_BODY_BYTES=str(MAX_JSON),
        RADNODE_MAX_STOW_PARTS=str(MAX_PARTS),
        RADNODE_QIDO_MAX_RESULTS="3",
        RADNODE_AUTH_FAILURE_INTERVAL_S=str(INTERVAL_S),
    )
    yield node
    node.stop()


def _base(node: RadnodeProcess) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def _stow(node: RadnodeProcess, *parts: bytes, path: str = "/dicom-web/studies") -> httpx.Response:
    return httpx.post(
        _base(node) + path,
        content=stow_body(*parts),
        headers={"Content-Type": RELATED, **auth(MODALITY)},
        timeout=60,
    )


def _qido(node: RadnodeProcess, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{_base(node)}/dicom-web{path}", params=params, headers=auth(VIEWER))


# -- UIDs -----------------------------------------------------------------------------------


def test_a_uid_with_a_trailing_newline_is_not_a_uid(api: RadnodeProcess) -> None:
    bad = quote("1.2.3\n\x00", safe="")
    r = httpx.get(f"{_base(api)}/dicom-web/studies/{bad}/metadata", headers=auth(VIEWER))
    assert r.status_code == 400, r.text
    assert "not a valid UID" in r.text


# -- numbers beyond 64 bits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/studies", {"offset": BIG}),
        ("/studies", {"limit": BIG}),
        ("/instances", {"InstanceNumber": BIG}),
        ("/instances", {"Rows": BIG}),
        ("/series", {"SeriesNumber": BIG}),
        ("/instances", {"InstanceNumber": f"1\\{BIG}"}),
    ],
)
def test_qido_numbers_beyond_the_index_are_400(
    api: RadnodeProcess, path: str, params: dict[str, str]
) -> None:
    r = _qido(api, path, **params)
    assert r.status_code == 400, r.text
    (name,) = params
    assert name in r.json()["detail"]


@pytest.mark.parametrize("path", ["/series", "/instances", f"/studies/{generate_uid()}/series"])
def test_modalities_in_study_below_study_level_is_400(api: RadnodeProcess, path: str) -> None:
    r = _qido(api, path, ModalitiesInStudy="CT")
    assert r.status_code == 400, r.text
    assert "ModalitiesInStudy" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/api/worklist", VIEWER),
        ("/api/results", VIEWER),
        ("/api/retraining/runs", ADMIN),
    ],
)
def test_api_offsets_beyond_the_index_are_400(api: RadnodeProcess, path: str, token: str) -> None:
    r = httpx.get(_base(api) + path, params={"offset": BIG}, headers=auth(token))
    assert r.status_code == 400, r.text
    assert "offset" in r.json()["detail"]


def test_an_instance_number_beyond_64_bits_is_stored_and_indexed_as_unknown(
    api: RadnodeProcess,
) -> None:
    ds = instance(raw={"InstanceNumber": ("IS", BIG)})
    r = _stow(api, part10(ds))
    assert r.status_code == 200, r.text
    found = _qido(api, "/instances", SOPInstanceUID=ds.SOPInstanceUID)
    assert found.status_code == 200
    (item,) = found.json()
    assert "Value" not in item.get("00200013", {})  # InstanceNumber: unknown to the index
    stored = list((api.data_dir / "studies" / ds.StudyInstanceUID).rglob("*.dcm"))
    assert [p.stem for p in stored] == [ds.SOPInstanceUID]


# -- one SOP Instance UID, one study --------------------------------------------------------


def test_a_sop_instance_uid_of_another_study_is_refused_and_leaves_no_row(
    api: RadnodeProcess,
) -> None:
    first = instance(patient_name="Original^Patient")
    assert _stow(api, part10(first)).status_code == 200
    intruder_study = generate_uid()
    copy = instance(
        study_uid=intruder_study, sop_uid=first.SOPInstanceUID, patient_name="Intruder^Eve"
    )
    r = _stow(api, part10(copy))
    assert r.status_code == 409, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert failed["00081155"]["Value"] == [first.SOPInstanceUID]
    assert "another study or series" in r.headers["Warning"]
    assert "00081199" not in r.json()  # nothing names the original as if stored
    assert _qido(api, "/studies", StudyInstanceUID=intruder_study).json() == []
    assert _qido(api, "/studies", PatientName="Intruder*").json() == []
    assert not (api.data_dir / "studies" / intruder_study).exists()
    # The original is untouched.
    (row,) = _qido(api, "/instances", SOPInstanceUID=first.SOPInstanceUID).json()
    assert row["0020000D"]["Value"] == [first.StudyInstanceUID]


# -- WADO-RS frame lists --------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiframe(api: RadnodeProcess) -> str:
    ds = instance(frames=20, size=8)
    assert _stow(api, part10(ds)).status_code == 200
    return (
        f"{_base(api)}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _parts(r: httpx.Response) -> int:
    boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    return r.content.count(b"--" + boundary.encode() + b"\r\n")


def test_a_repeated_frame_number_is_sent_once_and_streamed(multiframe: str) -> None:
    frames = ",".join(["1"] * 4000)
    r = httpx.get(f"{multiframe}/frames/{frames}", headers=auth(VIEWER), timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert _parts(r) == 1
    assert len(r.content) < 1024  # one 64-byte frame and its part head, not 4,000
    assert r.headers.get("transfer-encoding") == "chunked"  # streamed, not built whole
    both = httpx.get(f"{multiframe}/frames/3,2,3,2", headers=auth(VIEWER))
    assert both.status_code == 200 and _parts(both) == 2


def test_more_distinct_frames_than_the_limit_is_400(multiframe: str) -> None:
    frames = ",".join(str(n) for n in range(1, MAX_FRAMES + 2))
    r = httpx.get(f"{multiframe}/frames/{frames}", headers=auth(VIEWER))
    assert r.status_code == 400
    assert "max_frames_per_request" in r.json()["detail"]
    at_limit = ",".join(str(n) for n in range(1, MAX_FRAMES + 1))
    ok = httpx.get(f"{multiframe}/frames/{at_limit}", headers=auth(VIEWER))
    assert ok.status_code == 200 and _parts(ok) == MAX_FRAMES


# -- request bodies -------------------------------------------------------------------------


def _head(method: str, path: str, *lines: str) -> bytes:
    text = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{x}\r\n" for x in lines)
    return (text + "\r\n").encode()


@pytest.mark.parametrize(
    "path", [f"/api/studies/{generate_uid()}/feedback", "/api/pacs/orthanc/stable-studies"]
)
def test_a_body_without_a_token_is_refused_before_it_is_read(
    api: RadnodeProcess, path: str
) -> None:
    """381 MiB announced, a few bytes sent: the 401 comes at once, the body unread."""
    started = time.monotonic()
    head = _head(
        "POST", path, "Content-Type: application/json", f"Content-Length: {381 * 1024 * 1024}"
    )
    answer = raw_request(api.http_port, head, b'{"decision": "confirm", "comment": "', wait_s=10)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"bearer token" in answer
    assert time.monotonic() - started < 5


def test_an_oversized_json_body_is_413_before_and_while_it_is_read(api: RadnodeProcess) -> None:
    path = f"/api/studies/{generate_uid()}/feedback"
    declared = _head(
        "POST",
        path,
        f"Authorization: Bearer {RADIOLOGIST}",
        "Content-Type: application/json",
        f"Content-Length: {MAX_JSON + 1}",
    )
    answer = raw_request(api.http_port, declared, b"{", wait_s=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_json_body_bytes" in answer
    chunk = b'{"comment": "' + b"x" * (MAX_JSON + 100) + b'"}'
    chunked = _head(
        "POST",
        path,
        f"Authorization: Bearer {RADIOLOGIST}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    )
    body = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    answer = raw_request(api.http_port, chunked, body, wait_s=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A small body still reaches the route (an unknown study: 404).
    r = httpx.post(
        _base(api) + path, json={"decision": "confirm"}, headers=auth(RADIOLOGIST), timeout=30
    )
    assert r.status_code == 404, r.text


# -- STOW-RS parts --------------------------------------------------------------------------


def _tiny_parts(count: int) -> bytes:
    part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nxx\r\n".encode()
    return part * count + f"--{BOUNDARY}--\r\n".encode()


def test_more_parts_than_the_limit_is_413_and_stores_nothing(api: RadnodeProcess) -> None:
    before = study_folders(api)
    body = _tiny_parts(MAX_PARTS).replace(
        f"--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10(instance())
        + f"\r\n--{BOUNDARY}--".encode(),
    )
    r = httpx.post(
        f"{_base(api)}/dicom-web/studies",
        content=body,
        headers={"Content-Type": RELATED, **auth(MODALITY)},
        timeout=60,
    )
    assert r.status_code == 413, r.text
    assert "max_stow_parts" in r.json()["detail"]
    assert study_folders(api) == before


def test_refused_parts_are_logged_once_per_request(api: RadnodeProcess) -> None:
    lines_before = len(log_lines(api))
    r = httpx.post(
        f"{_base(api)}/dicom-web/studies",
        content=_tiny_parts(MAX_PARTS),
        headers={"Content-Type": RELATED, **auth(MODALITY)},
        timeout=60,
    )
    assert r.status_code == 409
    assert len(r.json()["00081198"]["Value"]) == MAX_PARTS
    time.sleep(0.5)
    new = log_lines(api)[lines_before:]
    refusals = [e for e in new if "refused" in e["msg"] and e["logger"] != "dicomweb.access"]
    assert len(refusals) == 1, [e["msg"] for e in refusals][:5]
    assert refusals[0]["refused"] == MAX_PARTS and "not_part10" in refusals[0]["reasons"]


# -- response headers and links ---------------------------------------------------------------


def test_pages_cannot_be_framed_and_patient_data_is_not_cached(api: RadnodeProcess) -> None:
    page = httpx.get(f"{_base(api)}/ui/", follow_redirects=True)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    for path, token in [
        ("/dicom-web/studies", VIEWER),
        ("/api/worklist", VIEWER),
        ("/api/results", VIEWER),
        ("/api/whoami", VIEWER),
    ]:
        r = httpx.get(_base(api) + path, headers=auth(token))
        assert r.status_code == 200, (path, r.text)
        assert r.headers["cache-control"] == "no-store", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_api_docs_load_nothing_from_elsewhere(api: RadnodeProcess) -> None:
    docs = httpx.get(f"{_base(api)}/docs")
    assert docs.status_code == 200
    assert "cdn." not in docs.text and "https://" not in docs.text
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert asset in docs.text
        got = httpx.get(_base(api) + asset)
        assert got.status_code == 200 and len(got.content) > 10_000
    assert httpx.get(f"{_base(api)}/redoc").status_code == 404


def test_links_do_not_follow_the_host_header_or_untrusted_forwarding(
    api: RadnodeProcess,
) -> None:
    ds = instance()
    r = httpx.post(
        f"{_base(api)}/dicom-web/studies",
        content=stow_body(part10(ds)),
        headers={
            "Content-Type": RELATED,
            "Host": "evil.example:8443",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            **auth(MODALITY),
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    (item,) = r.json()["00081199"]["Value"]
    url = item["00081190"]["Value"][0]
    assert url.startswith(f"http://127.0.0.1:{api.http_port}/dicom-web/studies/"), url
    meta = httpx.get(
        f"{_base(api)}/dicom-web/studies/{ds.StudyInstanceUID}/metadata",
        headers={"Host": "evil.example", **auth(VIEWER)},
    )
    assert "evil.example" not in meta.text
    assert f"http://127.0.0.1:{api.http_port}/dicom-web/" in meta.text


def test_qido_results_are_capped_with_a_warning(api: RadnodeProcess) -> None:
    for _ in range(4):
        assert _stow(api, part10(instance())).status_code == 200
    r = _qido(api, "/studies")
    assert r.status_code == 200 and len(r.json()) == 3
    assert "more than 3 results" in r.headers["warning"]
    page = _qido(api, "/studies", limit="2", offset="1")
    assert len(page.json()) == 2 and "warning" not in page.headers


# -- failed logins ----------------------------------------------------------------------------


def _logins(node: RadnodeProcess) -> list[str]:
    out = []
    for m in audit_messages(node.data_dir / "audit"):
        if event_id(m) == "110114":
            out.append(m.findtext("EventIdentification/EventOutcomeDescription") or "")
    return out


def _count(description: str) -> int:
    """How many failures one audit message stands for."""
    match = re.search(r"repeated (\d+) more times", description)
    return int(match.group(1)) if match else 1


def test_repeated_401s_are_audited_and_logged_once_per_interval(api: RadnodeProcess) -> None:
    time.sleep(INTERVAL_S + 1)  # earlier tests' windows are over
    audited = len(_logins(api))
    logged = len(log_lines(api))
    started = time.monotonic()
    with httpx.Client() as client:
        for _ in range(30):
            assert client.get(f"{_base(api)}/dicom-web/studies").status_code == 401
    windows = int((time.monotonic() - started) // INTERVAL_S) + 1
    assert _logins(api)[audited] == "bearer token missing"  # the first at once
    time.sleep(INTERVAL_S + 1.5)
    new = _logins(api)[audited:]
    assert sum(_count(d) for d in new) == 30
    assert len(new) <= 2 * windows, new  # per interval: the first, then one with the count
    assert any("more times in" in d for d in new)
    lines = log_lines(api)[logged:]
    access = [e for e in lines if e["msg"] == "http request" and e.get("status") == 401]
    summary = [e for e in lines if e["msg"] == "http requests refused, repeated"]
    assert len(access) + sum(e["count"] for e in summary) == 30
    assert len(access) + len(summary) <= 2 * windows
    warnings = [e for e in lines if e["msg"].startswith("login fail")]
    assert len(warnings) == len(new)
