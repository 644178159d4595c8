"""Path traversal: 100+ hostile UIDs and names (``../``, absolute paths, NUL, overlong,
unicode, ``..\\``, ``%2e%2e`` ...) sent by C-STORE, STOW-RS and in WADO/QIDO URLs are each
refused with a clear status, and nothing is created outside the data dir (nor in its store)."""

from __future__ import annotations

import http.client
import os
from io import BytesIO
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE

from ai_node.synth import StudySpec, write_study
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import RELATED, stow_body

BASES = [
    "..",
    ".",
    "../",
    "../..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/tmp/radnode-pwned",
    "..\\..\\windows\\win.ini",
    "..\\",
    "%2e%2e",
    "%2e%2e%2f",
    "..%2f..%2f",
    "%252e%252e%252f",
    "%c0%ae%c0%ae/",
    "....//",
    "..././",
    "..;/",
    "/",
    "//",
    "\\\\server\\share",
    "C:\\Windows",
    "~",
    "~root/.ssh",
    "\x00",
    "1.2.3\x00/../x",
    "1.2.3\n4",
    "1.2\r\n.3",  # pydicom strips surrounding whitespace, so not at the ends
    "1" * 65,
    "1." * 40 + "1",
    "9" * 200,
    "1.2.840." + "9" * 100,
    "１.２.３",
    "١.٢.٣",
    "1.2.3∕..∕x",
    "1.2.3／..／x",
    "‥",
    "1..2",
    ".1.2",
    "1.2.",
    "",
    " ",
    "1.2.3 4",
    "$(id)",
    "`id`",
    "1.2.3;rm -rf /",
    "1.2.3|x",
    "*",
    "?",
    "1.2.*",
    "con",
    "nul",
    "aux.dcm",
    "\u202e1.2.3",
    "1.2.3\U0001f4a9",
    "a.b.c",
    "1.2.3.dcm",
    "studies",
    "tmp",
    "index.sqlite3",
]
HOSTILE = sorted(
    set(BASES + [f"1.2.3/{b}" for b in BASES[:30]] + [f"{b}/1.2.3" for b in BASES[:20]])
)
VALID = {"study": "1.2.826.0.1.3680043.8.498.1", "series": "1.2.826.0.1.3680043.8.498.2"}


def test_there_are_over_a_hundred_hostile_values() -> None:
    assert len(HOSTILE) >= 100


def _raw_ui(value: str) -> RawDataElement:
    data = value.encode("utf-8", "surrogateescape")
    data += b"\0" * (len(data) % 2)
    return RawDataElement(Tag(0), "UI", len(data), data, 0, False, True)


def _with(template: Dataset, **uids: str) -> Dataset:
    """A copy of ``template`` whose named UIDs hold raw, unvalidated bytes."""
    ds = Dataset()
    ds.update(template)
    ds.file_meta = template.file_meta
    for keyword, value in uids.items():
        tag = Tag(keyword)
        raw = _raw_ui(value)
        ds._dict[tag] = RawDataElement(tag, "UI", raw.length, raw.value, 0, False, True)
    return ds


def _part10(ds: Dataset, sop_uid: str | None = None) -> bytes:
    buf = BytesIO()
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")  # replaced below when given
    dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    if sop_uid is not None:
        raw = _raw_ui(sop_uid).value
        assert raw is not None
        data = data.replace(b"1.2.3.4\0", raw.ljust(8, b"\0")[:8], 1)
    return data


def _snapshot(root: Path, skip: set[Path]) -> set[tuple[str, int]]:
    found = set()
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
        for name in files:
            path = Path(directory, name)
            if path.suffix != ".log":
                found.add((str(path.relative_to(root)), path.stat().st_size))
    return found


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """The final status and body of a raw request (the path sent exactly as given), following the
    307 redirects a path ending in "/" gets to the same route without it."""
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": RELATED} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        finally:
            conn.close()
        location = response.getheader("location")
        if response.status != 307 or not location:
            return response.status, content
        parsed = urlsplit(location)
        assert parsed.hostname in (None, "127.0.0.1"), location
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return response.status, content


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    _, [path] = write_study(
        StudySpec(region="chest", slices=1, seed=31, rows=16, columns=16),
        tmp_path_factory.mktemp("traversal"),
    )
    return dcmread(path)


def test_hostile_uids_by_cstore_stow_and_urls_create_nothing(
    tmp_path: Path, template: Dataset
) -> None:
    parent = tmp_path / "site"
    scp = RadnodeProcess(parent / "scp-data", "scp").start()
    api = RadnodeProcess(parent / "api-data", "api").start()
    data_dirs = {scp.data_dir, api.data_dir}
    outside_before = _snapshot(parent, data_dirs)
    stores_before = {d: _snapshot(d / "studies", set()) for d in data_dirs}
    root_before = set(os.listdir("/"))
    try:
        # C-STORE: hostile Study and Series Instance UIDs (the SOP Instance UID travels in
        # the command too, where pynetdicom itself refuses most of them).
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(template.SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RADNODE")
        assert assoc.is_established
        statuses = []
        try:
            for value in HOSTILE:
                for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
                    status = assoc.send_c_store(_with(template, **{keyword: value}))
                    statuses.append((keyword, value, int(status.Status)))
        finally:
            assoc.release()
        accepted = [s for s in statuses if s[2] not in (0xA900, 0xC000)]
        assert accepted == [], accepted[:5]

        # STOW-RS: one request, every part hostile (dataset UIDs and meta SOP Instance UID).
        parts = []
        for value in HOSTILE:
            parts.append(_part10(_with(template, StudyInstanceUID=value)))
            parts.append(_part10(_with(template, SOPInstanceUID=value), sop_uid=value))
        base = f"http://127.0.0.1:{api.http_port}/dicom-web"
        r = httpx.post(
            f"{base}/studies",
            content=stow_body(*parts),
            headers={"Content-Type": RELATED},
            timeout=120,
        )
        assert r.status_code == 409, r.text[:300]
        failed = r.json()["00081198"]["Value"]
        assert len(failed) == len(parts)
        assert {f["00081197"]["Value"][0] for f in failed} <= {0xA900, 0xC000}
        assert "00081199" not in r.json()

        # URLs: every WADO-RS / QIDO-RS path position and a query key.
        answered = []
        for value in HOSTILE:
            q = quote(value, safe="")
            raw = quote(value, safe="/%.\\~")  # unnormalised: ../ reaches the server as is
            v = VALID
            for path in (
                f"/dicom-web/studies/{q}",
                f"/dicom-web/studies/{raw}",
                f"/dicom-web/studies/{q}/metadata",
                f"/dicom-web/studies/{v['study']}/series/{q}",
                f"/dicom-web/studies/{v['study']}/series/{q}/metadata",
                f"/dicom-web/studies/{v['study']}/series/{v['series']}/instances/{q}",
                f"/dicom-web/studies/{v['study']}/series/{v['series']}/instances/{q}/frames/1",
                f"/dicom-web/studies/{q}/rendered",
                f"/dicom-web/studies/{q}/series",
                f"/dicom-web/studies?StudyInstanceUID={q}",
            ):
                answered.append((path, _request(api.http_port, "GET", path)))
            post = f"/dicom-web/studies/{q}"
            answer = _request(api.http_port, "POST", post, stow_body(parts[0]))
            answered.append((f"POST {post}", answer))
        # 400 (not a UID), 404 (no such resource or route), 422 (bad parameter), 409 (every
        # STOW part refused); an empty value or "/" ends on a search route: 200 with [].
        bad = [
            (p, s, body[:80])
            for p, (s, body) in answered
            if s not in (400, 404, 409, 422) and not (s == 200 and body.strip() == b"[]")
        ]
        assert bad == [], bad[:10]
        assert len(answered) >= 1000
        # Both servers still answer.
        assert httpx.get(f"http://127.0.0.1:{api.http_port}/healthz").status_code == 200
    finally:
        scp.stop()
        api.stop()
    assert _snapshot(parent, data_dirs) == outside_before
    for d in data_dirs:
        assert _snapshot(d / "studies", set()) == stores_before[d], "store changed"
    assert set(os.listdir("/")) == root_before
    assert not Path("/tmp/radnode-pwned").exists()
