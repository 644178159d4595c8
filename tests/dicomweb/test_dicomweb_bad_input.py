"""Bad STOW-RS bodies and QIDO-RS parameters: a clear 4xx, nothing stored, the server fine."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.dicomweb_studies import VariedStudies, dicomweb_url, part10
from tests.support.radnode_process import RadnodeProcess

BOUNDARY = "radnode-test-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body(*parts: bytes, close: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def instance_count(node: RadnodeProcess) -> int:
    health = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz").json()
    return int(health["index"]["instances"])


@pytest.fixture(scope="module")
def small_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    """`radnode api` accepting STOW bodies of at most 16 KiB."""
    root = tmp_path_factory.mktemp("dicomweb-small")
    node = RadnodeProcess(root / "data", "api", env={"RADNODE_MAX_STOW_BYTES": "16384"}).start()
    yield node
    node.stop()


def test_stow_refusals(api: RadnodeProcess, varied_studies: VariedStudies) -> None:
    url = f"{dicomweb_url(api)}/studies"
    good = part10(varied_studies.datasets[0])
    before = instance_count(api)

    cases = [
        ({"Content-Type": "application/json"}, b"{}", 415),
        ({"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'}, b"", 415),
        ({"Content-Type": 'multipart/related; type="application/dicom"'}, body(good), 400),
        ({"Content-Type": RELATED}, b"no multipart here", 400),
        ({"Content-Type": RELATED}, body(good, close=False)[:-10], 400),
        ({"Content-Type": RELATED}, b"", 400),
    ]
    for headers, content, expected in cases:
        response = httpx.post(url, headers=headers, content=content)
        assert response.status_code == expected, (headers, response.text)
        assert response.json()["detail"]  # a message saying why

    # A part that is not DICOM: 409 with FailureReason 0xC000 (cannot understand).
    response = httpx.post(url, headers={"Content-Type": RELATED}, content=body(b"hello" * 100))
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC000]

    # A truncated dataset: refused like C-STORE refuses it.
    response = httpx.post(url, headers={"Content-Type": RELATED}, content=body(good[:-300]))
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]

    # An instance of another study sent to /studies/{study}: refused, not stored.
    other = varied_studies.study_uids[1]
    response = httpx.post(f"{url}/{other}", headers={"Content-Type": RELATED}, content=body(good))
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]

    assert instance_count(api) == before

    # One good, one bad: 202 with both sequences; only the good one is stored.
    response = httpx.post(url, headers={"Content-Type": RELATED}, content=body(good, b"junk"))
    assert response.status_code == 202
    assert response.headers["warning"].startswith("299 ")
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1 and len(answer["00081198"]["Value"]) == 1
    assert instance_count(api) == before + 1


def test_stow_too_large(small_api: RadnodeProcess, varied_studies: VariedStudies) -> None:
    url = f"{dicomweb_url(small_api)}/studies"
    content = body(*(part10(ds) for ds in varied_studies.datasets))
    assert len(content) > 16384
    response = httpx.post(url, headers={"Content-Type": RELATED}, content=content)
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for i in range(0, len(content), 8192):
            yield content[i : i + 8192]

    response = httpx.post(url, headers={"Content-Type": RELATED}, content=chunks())
    assert response.status_code == 413
    assert instance_count(small_api) == 0
    assert not list((small_api.data_dir / "tmp").rglob("stow.*"))  # spool removed
    assert httpx.get(f"http://127.0.0.1:{small_api.http_port}/healthz").status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=-1",
        "offset=x",
        "StudyDate=2024",
        "StudyDate=20240101-20240201-20240301",
        "StudyTime=noon",
        "NoSuchAttribute=1",
        "FFFFFFFF=1",
        "fuzzymatching=maybe",
        "includefield=NotAKeyword",
        "ReferencedStudySequence.StudyInstanceUID=1.2",
        "NumberOfStudyRelatedInstances=x",
    ],
)
def test_qido_malformed(api: RadnodeProcess, query: str) -> None:
    response = httpx.get(f"{dicomweb_url(api)}/studies?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["detail"]


def test_bad_paths(api: RadnodeProcess) -> None:
    base = dicomweb_url(api)
    assert httpx.get(f"{base}/studies/not..a/uid/series").status_code in (400, 404)
    assert httpx.get(f"{base}/studies/1.2.3.4.5.6.7.8.9").status_code == 404
    assert httpx.get(f"{base}/studies/..%2F..%2Fetc/series").status_code in (400, 404)
    assert httpx.get(f"{base}/studies/1.2.abc/series").status_code == 400
    assert httpx.get(f"{base}/studies/1.2.abc/metadata").status_code == 400
    frames = f"{base}/studies/1.2.3/series/1.2.4/instances/1.2.5/frames"
    assert httpx.get(f"{frames}/x").status_code == 400
    assert httpx.get(f"http://127.0.0.1:{api.http_port}/healthz").status_code == 200
