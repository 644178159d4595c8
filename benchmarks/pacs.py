"""``python -m benchmarks.analysis e2e --via orthanc``: modality -> Orthanc -> radnode -> SR
in Orthanc.

After a small warm-up study, for each round a synthetic study goes by dcmtk
``storescu`` to Orthanc (path 2: radnode's changes follower fetches it while Orthanc
receives it, completion on the follower's quiet period or Orthanc's StableStudy,
analysis, STOW-RS of the SR) and another one to radnode (path 1: analysis, then the
originals and the SR forwarded by STOW-RS). The clock runs from storescu's exit (the
last C-STORE response) until radnode's result covers the whole study and Orthanc's
QIDO-RS finds its SR. Orthanc runs from ``deploy/orthanc/orthanc.json`` (StableAge as
configured there); Orthanc, storescu and radnode all run with ``TCP_NODELAY=1``, and the
output lists each one's environment.

``python -m benchmarks.pacs fetch``: the ways to get a study from Orthanc into radnode,
side by side.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.analysis import _study, _warm_files, start_serve
from pacs_link import client
from radnode_core.settings import PacsPeer
from tests.support.orthanc_peer import OrthancPacs
from tests.support.processes import free_port, stop_process, wait_port

NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
WARMUP_SLICES = 16


def _sr_found(orthanc: OrthancPacs, session: requests.Session, study_uid: str) -> bool:
    response = session.get(
        f"{orthanc.url}/studies/{study_uid}/series",
        params={"Modality": "SR"},
        headers={"Accept": "application/dicom+json"},
        timeout=10,
    )
    return response.status_code == 200 and bool(response.content) and bool(response.json())


def _whole_study_sr(
    orthanc: OrthancPacs, session: requests.Session, http_port: int, uid: str, slices: int
) -> bool:
    """The SR of the whole study is in Orthanc: radnode's result covers every slice (not a
    study completed early while the sender stalled), its SR row is delivered, and Orthanc's
    QIDO-RS finds it."""
    api = f"http://127.0.0.1:{http_port}/api"
    result = requests.get(f"{api}/studies/{uid}/result", timeout=10)
    if result.status_code != 200:
        return False
    body = result.json()
    if body.get("status") != "done" or body.get("version") != slices:
        return False
    outbox = requests.get(f"{api}/outbox", params={"study_uid": uid}, timeout=10).json()
    srs = [item for item in outbox["items"] if item["kind"] == "sr"]
    if not srs or any(item["state"] != "delivered" for item in srs):
        return False
    return _sr_found(orthanc, session, uid)


def _legs(data: Path, uid: str, slices: int, sent_at: float, found_at: float) -> list[float]:
    """Seconds after the last C-STORE response at which radnode stored the study's last
    instance, queued the study's whole version, finished it, had the SR delivered, and
    Orthanc's QIDO-RS found it."""
    import sqlite3
    from datetime import UTC, datetime

    def epoch(value: str) -> float:
        stamp = datetime.fromisoformat(value)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()

    with sqlite3.connect(f"file:{data / 'index.sqlite3'}?mode=ro", uri=True) as db:
        (stored,) = db.execute(
            "select max(received_at) from instances where study_uid = ? and calling_aet = ?",
            (uid, "ORTHANC"),
        ).fetchone()
        queued, finished = db.execute(
            "select created_at, finished_at from jobs where study_uid = ? and version = ?",
            (uid, slices),
        ).fetchone()
        (delivered,) = db.execute(
            "select max(delivered_at) from outbox where study_uid = ? and kind = 'sr'",
            (uid,),
        ).fetchone()
    times = [stored, epoch(queued), epoch(finished), epoch(delivered), found_at]
    return [t - sent_at for t in times]


def _send(storescu: str, port: int, called: str, files: list[Path]) -> float:
    t0 = time.perf_counter()
    sent = subprocess.run(
        [storescu, "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=NODELAY_ENV,
    )
    if sent.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {sent.stderr[-500:]}")
    return time.perf_counter() - t0


def orthanc_e2e_benchmark(slices: int, size: int, runs: int, work_dir: Path) -> str:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed")
    path1 = [_study(work_dir, slices, size, seed=200 + i) for i in range(runs)]
    path2 = [_study(work_dir, slices, size, seed=300 + i) for i in range(runs)]
    tmp = Path(tempfile.mkdtemp(prefix="radnode-e2e-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    orthanc = OrthancPacs(tmp / "orthanc", radnode_port=dicom_port, env=NODELAY_ENV)
    orthanc.start()
    env = {**NODELAY_ENV, "RADNODE_PACS_PEERS": orthanc.peer_json(follow_changes=True)}
    log = (tmp / "radnode.log").open("wb")
    proc = start_serve(tmp / "data", dicom_port, http_port, log, env)
    session = client.session(orthanc.peer())
    rows: list[tuple[str, int, float, float]] = []
    legs: list[tuple[int, list[float], dict[str, Any]]] = []
    try:
        wait_port(dicom_port, proc)
        wait_port(http_port, proc)
        # radnode has read the feed's start (it follows from its end at first start)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = session.get(f"http://127.0.0.1:{http_port}/readyz", timeout=5)
            if ready.status_code == 200:
                break
            time.sleep(0.2)
        # A small study through radnode first, so that no measured round pays for loading
        # TensorFlow and the models (a deployed node has them loaded).
        warm_uid, warm_files = _study(work_dir, WARMUP_SLICES, size, seed=199)
        _send(storescu, dicom_port, "RADNODE", warm_files)
        t1 = time.perf_counter()
        while not _whole_study_sr(orthanc, session, http_port, warm_uid, len(warm_files)):
            if time.perf_counter() - t1 > 600 or proc.poll() is not None:
                raise RuntimeError(f"warm-up study not done; see {tmp}/radnode.log")
            time.sleep(0.1)
        for i in range(runs):
            for path, port, called, (uid, files) in (
                (
                    "2: storescu -> Orthanc -> radnode -> SR",
                    orthanc.dicom_port,
                    "ORTHANC",
                    path2[i],
                ),
                ("1: storescu -> radnode -> originals + SR", dicom_port, "RADNODE", path1[i]),
            ):
                _warm_files(files)
                send_s = _send(storescu, port, called, files)
                t1, sent_at = time.perf_counter(), time.time()
                while not _whole_study_sr(orthanc, session, http_port, uid, len(files)):
                    if time.perf_counter() - t1 > 600 or proc.poll() is not None:
                        raise RuntimeError(f"no SR in Orthanc for {uid}; see {tmp}/radnode.log")
                    time.sleep(0.05)
                rows.append((path, i + 1, send_s, time.perf_counter() - t1))
                if called == "ORTHANC":
                    found_at = time.time()
                    result = session.get(
                        f"http://127.0.0.1:{http_port}/api/studies/{uid}/result", timeout=10
                    ).json()
                    leg = _legs(tmp / "data", uid, len(files), sent_at, found_at)
                    legs.append((i + 1, leg, result.get("timings") or {}))
    finally:
        stop_process(proc)
        log.close()
        orthanc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"{slices} slices of {size}x{size} per study, one storescu association each; "
        f"Orthanc {orthanc_version()} from deploy/orthanc/orthanc.json (SQLite index, "
        "authentication on); `radnode serve` defaults with the PACS peer (STOW-RS delivery).",
        "",
        *environments(orthanc, env),
        "",
        "| path | round | send (s) | last C-STORE response -> whole study's SR found by QIDO "
        "in Orthanc (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {p} | {r} | {s:.2f} | {w:.2f} |" for p, r, s, w in rows]
    lines += [
        "",
        "Path 2, where the time after the last C-STORE response went (from radnode's index):",
        "",
        "| round | last instance stored in radnode | study queued | analysed | SR delivered "
        "(STOW-RS answered) | found by QIDO | job: decode / inference / SR / total (s) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r} | "
        + " | ".join(f"{x:+.2f}" for x in leg)
        + f" | {t.get('decode_s')} / {t.get('inference_s')} / {t.get('sr_s')} / "
        f"{t.get('total_s')} |"
        for r, leg, t in legs
    ]
    lines.append("")
    for name in sorted({r[0] for r in rows}, reverse=True):
        waits = [r[3] for r in rows if r[0] == name]
        lines.append(
            f"- Path {name.split(':')[0]}, {len(waits)} rounds after a {WARMUP_SLICES}-slice "
            f"warm-up study: median {statistics.median(waits):.2f} s, shortest "
            f"{min(waits):.2f} s, longest {max(waits):.2f} s."
        )
    return "\n".join(lines)


def environments(orthanc: OrthancPacs, radnode_env: dict[str, str]) -> list[str]:
    """Each peer's environment and the settings that bear on the figure, as it ran."""
    from radnode_core.settings import Settings

    config = orthanc.config()
    defaults = {
        "TcpNoDelay": True,
        "KeepAlive": True,
        "HttpThreadsCount": 50,
        "HttpCompressionEnabled": True,
    }
    orthanc_keys = {k: config.get(k, v) for k, v in defaults.items()}
    peer = orthanc.peer(follow_changes=True)
    settings = Settings(data_dir=Path(tempfile.gettempdir()))

    def line(name: str, env: dict[str, str] | None, values: dict[str, object]) -> str:
        nodelay = (env if env is not None else os.environ).get("TCP_NODELAY", "unset")
        return f"- {name}: TCP_NODELAY={nodelay}, " + ", ".join(
            f"{k}={v}" for k, v in values.items()
        )

    return [
        "Environments:",
        "",
        line("storescu", NODELAY_ENV, {"dcmtk": tool_version("storescu")}),
        line(
            "Orthanc",
            orthanc.env,
            {"StableAge": f"{config['StableAge']} s", **orthanc_keys, "index": "SQLite"},
        ),
        line(
            "radnode serve",
            radnode_env,
            {
                "changes_poll_s": settings.changes_poll_s,
                "fetch_workers": peer.fetch_workers,
                "quiet_s (PACS peer)": peer.quiet_s,
                "quiet_period_s": settings.quiet_period_s,
                "worker_poll_s": settings.worker_poll_s,
                "outbox_poll_s": settings.outbox_poll_s,
                "cores": os.cpu_count(),
            },
        ),
    ]


def tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    first = out.splitlines()[0] if out else "?"
    return first.split("v", 1)[-1].split()[0] if "v" in first else first


def orthanc_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "orthanc"], capture_output=True, text=True
        ).stdout
    except OSError:
        return "?"
    return out.split("+")[0] or "?"


def _wado_series(node: Any, peer: PacsPeer, study_uid: str) -> int:
    """Whole series by WADO-RS (one multipart response per series), each part stored."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    web = client.dicomweb(peer)
    count = 0
    for series in web.search_for_series(study_instance_uid=study_uid):
        series_uid = series["0020000E"]["Value"][0]
        for ds in web.iter_series(study_uid, series_uid):
            ts = ds.file_meta.TransferSyntaxUID
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = ts.is_little_endian, ts.is_implicit_VR
            write_dataset(buf, ds)
            node.ingestor.ingest(buf.getvalue(), str(ts), source="pacs", calling_aet="ORTHANC")
            count += 1
    return count


def fetch_benchmark(slices: int, size: int, work_dir: Path, widths: list[int]) -> str:
    """Seconds to get one study from an Orthanc that holds it into radnode's store, each
    way: instance by instance (the follower before), the follower's pooled fetch streamed
    to disk at several widths, whole-series WADO-RS, and Orthanc pushing the study by
    C-STORE to radnode's SCP (``/modalities/radnode/store``)."""
    from concurrent.futures import wait

    from pacs_link.changes import split_part10
    from pacs_link.fetch import InstanceFetcher
    from radnode.assembly import build_node
    from radnode_core.settings import Settings

    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed")
    uid, files = _study(work_dir, slices, size, seed=400)
    tmp = Path(tempfile.mkdtemp(prefix="radnode-fetch-"))
    dicom_port, http_port = free_port(), free_port()
    orthanc = OrthancPacs(tmp / "orthanc", radnode_port=dicom_port, env=NODELAY_ENV)
    orthanc.start()
    rows: list[tuple[str, float]] = []
    proc = None
    log = (tmp / "radnode.log").open("wb")
    try:
        _send(storescu, orthanc.dicom_port, "ORTHANC", files)
        peer = orthanc.peer()
        session = client.session(peer)
        found = session.post(f"{orthanc.rest}/tools/lookup", data=uid, timeout=30).json()
        study_id = found[0]["ID"]
        listing = session.get(f"{orthanc.rest}/studies/{study_id}/instances", timeout=30)
        ids = [i["ID"] for i in listing.json()]
        for instance_id in ids:  # Orthanc's files in the page cache for every variant
            session.get(f"{orthanc.rest}/instances/{instance_id}/file", timeout=30).close()

        def fresh(name: str) -> Any:
            return build_node(Settings(data_dir=tmp / name, pacs_peers=[peer]))

        node = fresh("sequential")
        api = client.orthanc(peer)
        t0 = time.perf_counter()
        for instance_id in ids:
            tags = api.get_json(f"instances/{instance_id}")
            node.index.find_instance(tags["MainDicomTags"]["SOPInstanceUID"])
            raw, ts, _ = split_part10(api.get_binary(f"instances/{instance_id}/file"))
            node.ingestor.ingest(raw, ts, source="pacs", calling_aet="ORTHANC")
        rows.append(
            ("instance by instance, in memory (the follower before)", time.perf_counter() - t0)
        )
        node.close()

        for n in widths:
            node = fresh(f"pool{n}")
            fetcher = InstanceFetcher(node, peer, n)
            t0 = time.perf_counter()
            futures = [fetcher.submit(i) for i in ids]
            wait(futures)
            elapsed = time.perf_counter() - t0
            stored = sum(f.result() is not None for f in futures)
            fetcher.close()
            node.close()
            rows.append((f"pooled, streamed to disk, {n} at a time ({stored} stored)", elapsed))

        node = fresh("wado")
        t0 = time.perf_counter()
        stored = _wado_series(node, peer, uid)
        rows.append(
            (f"whole series by WADO-RS, multipart ({stored} stored)", time.perf_counter() - t0)
        )
        node.close()

        proc = start_serve(tmp / "push", dicom_port, http_port, log, NODELAY_ENV)
        wait_port(dicom_port, proc)
        t0 = time.perf_counter()
        pushed = session.post(
            f"{orthanc.rest}/modalities/radnode/store",
            json={"Resources": [study_id], "Synchronous": True},
            timeout=600,
        )
        pushed.raise_for_status()
        rows.append(("Orthanc pushes by C-STORE to radnode's SCP", time.perf_counter() - t0))
    finally:
        if proc is not None:
            stop_process(proc)
        log.close()
        orthanc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"{len(files)} slices of {size}x{size} already in Orthanc {orthanc_version()} "
        f"(TCP_NODELAY=1); each row into a fresh radnode store (fsync on).",
        "",
        "| way | seconds | instances/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {secs:.2f} | {len(files) / secs:.0f} |" for name, secs in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pacs")
    parser.add_argument("kind", choices=["fetch"])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--widths", default="1,2,4,8")
    parser.add_argument("--work-dir", type=Path, default=Path("bench-work"))
    a = parser.parse_args()
    widths = [int(w) for w in a.widths.split(",")]
    print(fetch_benchmark(a.slices, a.size, a.work_dir, widths))
