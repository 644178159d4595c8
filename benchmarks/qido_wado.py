"""``python -m benchmarks.qido_wado``: QIDO-RS latency and WADO-RS throughput, radnode vs Orthanc.

Both servers hold the same data, loaded before timing: ``studies`` one-instance
studies (small images; the headers are what QIDO reads) spread over 300 days
and many patients, plus one study with a ``slices``-instance 512x512 CT series.
radnode runs as ``radnode api`` (a subprocess, SQLite index, its store filled
through the same ingest path as C-STORE); Orthanc from Debian with its DICOMweb
plugin (SQLite index, loaded through its REST API). One HTTP client with
keep-alive times each request from the first byte sent to the last received.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.dicomweb_peer import OrthancDicomWeb
from tests.support.processes import free_port, stop_process

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 300


@dataclass(frozen=True)
class BenchData:
    small: list[bytes]  # Part 10 files, one per study
    series: list[bytes]  # the big series
    stow_series: list[bytes]  # a copy with new UIDs, sent by STOW-RS while measuring
    patient_ids: list[str]
    series_study_uid: str
    series_uid: str

    @property
    def series_bytes(self) -> int:
        return sum(len(b) for b in self.series)


def _instance(
    *, patient: int, study_uid: str, series_uid: str, number: int, day: int, size: int
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = f"Bench^Patient{patient:05d}"
    ds.PatientID = f"BP{patient:05d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "MF"[patient % 2]
    ds.StudyDate = (FIRST_DAY + dt.timedelta(days=day)).strftime("%Y%m%d")
    ds.StudyTime = f"{8 + patient % 10:02d}{patient % 60:02d}00"
    ds.AccessionNumber = f"BA{patient:06d}{number:03d}"[:16]
    ds.StudyID = str(patient)
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = "Bench^Referrer"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL"
    ds.InstanceNumber = number
    ds.SliceThickness = 1.0
    ds.ImagePositionPatient = [0.0, 0.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    y, x = np.mgrid[0:size, 0:size]
    ds.PixelData = ((x + y + number) % 2048).astype(np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def make_data(studies: int, slices: int, seed: int = 1) -> BenchData:
    rng = random.Random(seed)
    patients = max(1, studies // 2)  # about two studies per patient
    small = []
    for i in range(studies):
        patient = rng.randrange(patients)
        small.append(
            _instance(
                patient=patient,
                study_uid=generate_uid(),
                series_uid=generate_uid(),
                number=1,
                day=i * DAYS // studies,
                size=16,
            )
        )
    study_uid, series_uid = generate_uid(), generate_uid()
    series = [
        _instance(
            patient=patients,
            study_uid=study_uid,
            series_uid=series_uid,
            number=n,
            day=DAYS // 2,
            size=512,
        )
        for n in range(1, slices + 1)
    ]
    stow_study, stow_series_uid = generate_uid(), generate_uid()
    stow_series = [
        _instance(
            patient=patients + 1,
            study_uid=stow_study,
            series_uid=stow_series_uid,
            number=n,
            day=DAYS // 2,
            size=512,
        )
        for n in range(1, slices + 1)
    ]
    ids = [f"BP{p:05d}" for p in range(patients)]
    return BenchData(small, series, stow_series, ids, study_uid, series_uid)


def _stow_body(parts: list[bytes], boundary: str) -> Iterator[bytes]:
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield part
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


# -- servers ---------------------------------------------------------------------------


def _dataset_part(part10: bytes) -> tuple[bytes, str]:
    from dicomweb.routes.stow import split_part10

    syntax, _, _, dataset = split_part10(part10)
    return dataset, syntax


def load_radnode(data_dir: Path, data: BenchData) -> None:
    """Fill a radnode data dir through the C-STORE/STOW ingest path (in this process)."""
    from radnode_core.node import Node
    from radnode_core.settings import Settings

    node = Node(Settings.load(None, data_dir=data_dir))
    try:
        for blob in [*data.small, *data.series]:
            dataset, syntax = _dataset_part(blob)
            node.ingestor.ingest(dataset, syntax, source="stow")
    finally:
        node.close()


@contextmanager
def radnode_api(data_dir: Path) -> Iterator[str]:
    port = free_port()
    log = (data_dir.parent / "radnode-api.log").open("ab")
    exe = [sys.executable, "-m", "radnode.cli"]
    proc = subprocess.Popen(
        [
            *exe,
            "api",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"radnode api exited with {proc.returncode}")
            try:
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"{url}/dicom-web"
    finally:
        stop_process(proc, grace_s=20)


def load_orthanc(peer: OrthancDicomWeb, data: BenchData) -> None:
    with httpx.Client(timeout=60) as client:
        for blob in [*data.small, *data.series]:
            client.post(
                f"{peer.rest}/instances",
                content=blob,
                headers={"Content-Type": "application/dicom"},
            ).raise_for_status()


# -- measurements ----------------------------------------------------------------------


def _timed(fn: Callable[[], int], repeat: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = fn()
        times.append(time.perf_counter() - started)
    return times, size


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000}


def measure(base: str, data: BenchData, queries: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    with httpx.Client(timeout=300) as client:

        def get(url: str, accept: str = "application/dicom+json") -> int:
            response = client.get(url, headers={"Accept": accept})
            response.raise_for_status()
            return len(response.content)

        def count(url: str) -> int:
            response = client.get(url, headers={"Accept": "application/dicom+json"})
            response.raise_for_status()
            return len(response.json()) if response.status_code == 200 else 0

        get(f"{base}/studies?limit=1")  # warm the connection
        patients = [rng.choice(data.patient_ids) for _ in range(queries)]
        times = []
        matches = 0
        for pid in patients:
            started = time.perf_counter()
            matches += count(f"{base}/studies?PatientID={pid}")
            times.append(time.perf_counter() - started)
        out["qido_patient_id"] = {**_summary(times), "mean_matches": matches / len(patients)}

        times = []
        for _ in range(queries):
            first = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS - 15))
            last = first + dt.timedelta(days=14)
            started = time.perf_counter()
            matches = count(f"{base}/studies?StudyDate={first:%Y%m%d}-{last:%Y%m%d}")
            times.append(time.perf_counter() - started)
        out["qido_date_range_15d"] = {**_summary(times), "last_matches": matches}

        times, _ = _timed(lambda: count(f"{base}/studies?limit=100"), queries)
        out["qido_limit_100"] = _summary(times)

        series_url = f"{base}/studies/{data.series_study_uid}/series/{data.series_uid}"
        times, _ = _timed(lambda: count(f"{series_url}/metadata"), rounds)
        out["series_metadata"] = {
            "first_ms": times[0] * 1000,
            "median_ms": statistics.median(times) * 1000,
        }

        def retrieve() -> int:
            # Streamed and counted, not kept: a client that buffers the whole body
            # (httpx's .content) is slower than either server.
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            received = 0
            with client.stream("GET", series_url, headers={"Accept": accept}) as response:
                response.raise_for_status()
                for block in response.iter_raw(1024 * 1024):
                    received += len(block)
            return received

        times, size = _timed(retrieve, rounds)
        best, median = min(times), statistics.median(times)
        out["wado_series"] = {
            "bytes": size,
            "median_mb_s": size / median / 1e6,
            "best_mb_s": size / best / 1e6,
        }

        # STOW-RS of a new series in one request (once: a second time would be duplicates).
        boundary = "radnode-bench-boundary"
        started = time.perf_counter()
        response = client.post(
            f"{base}/studies",
            content=_stow_body(data.stow_series, boundary),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        sent = sum(len(p) for p in data.stow_series)
        out["stow_series"] = {"seconds": elapsed, "mb_s": sent / elapsed / 1e6}
    return out


def run(
    work_dir: Path, studies: int, slices: int, queries: int, rounds: int, seed: int = 1
) -> dict[str, Any]:
    """Load both servers and measure each in turn; returns the results (also for --json)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = work_dir / f"dicomweb-{stamp}-{os.getpid()}"
    run_dir.mkdir()
    print(f"generating {studies} studies + a {slices}-slice series ...", file=sys.stderr)
    data = make_data(studies, slices, seed)
    result: dict[str, Any] = {
        "studies": studies + 1,
        "series_instances": slices,
        "series_mb": data.series_bytes / 1e6,
        "queries": queries,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
        "radnode_commit": _git_commit(),
    }
    started = time.perf_counter()
    load_radnode(run_dir / "radnode-data", data)
    result["radnode_load_s"] = time.perf_counter() - started
    with radnode_api(run_dir / "radnode-data") as base:
        result["radnode"] = measure(base, data, queries, rounds, seed)
    with OrthancDicomWeb(run_dir / "orthanc") as peer:
        started = time.perf_counter()
        load_orthanc(peer, data)
        result["orthanc_load_s"] = time.perf_counter() - started
        result["orthanc"] = measure(peer.url, data, queries, rounds, seed)
        system = httpx.get(f"{peer.rest}/system").json()
        plugin = httpx.get(f"{peer.rest}/plugins/dicom-web").json()
        result["orthanc_version"] = (
            f"{system.get('Version')} (DICOMweb plugin {plugin.get('Version')})"
        )
    return result


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def report(result: dict[str, Any]) -> str:
    rows = [
        ("QIDO /studies?PatientID=<id> median ms", "qido_patient_id", "median_ms"),
        ("QIDO /studies?PatientID=<id> p95 ms", "qido_patient_id", "p95_ms"),
        ("QIDO /studies?StudyDate=<15 days> median ms", "qido_date_range_15d", "median_ms"),
        ("QIDO /studies?StudyDate=<15 days> p95 ms", "qido_date_range_15d", "p95_ms"),
        ("QIDO /studies?limit=100 median ms", "qido_limit_100", "median_ms"),
        ("series metadata, first call ms", "series_metadata", "first_ms"),
        ("series metadata, median ms", "series_metadata", "median_ms"),
        ("WADO-RS series retrieve, median MB/s", "wado_series", "median_mb_s"),
        ("WADO-RS series retrieve, best MB/s", "wado_series", "best_mb_s"),
        ("STOW-RS of a series in one request, s", "stow_series", "seconds"),
        ("STOW-RS of a series in one request, MB/s", "stow_series", "mb_s"),
    ]
    lines = [
        f"{result['date']}, radnode {result['radnode_commit']}, Orthanc "
        f"{result.get('orthanc_version')}, {result['cpus']} CPUs",
        f"{result['studies']} studies; series of {result['series_instances']} instances "
        f"({result['series_mb']:.0f} MB); {result['queries']} queries per QIDO row, "
        f"{result['rounds']} rounds per WADO row",
        "",
        "| measurement | radnode | Orthanc |",
        "|---|---:|---:|",
    ]
    for label, group, key in rows:
        ours, theirs = result["radnode"][group][key], result["orthanc"][group][key]
        lines.append(f"| {label} | {ours:.1f} | {theirs:.1f} |")
    ours_n = result["radnode"]["qido_date_range_15d"]["last_matches"]
    theirs_n = result["orthanc"]["qido_date_range_15d"]["last_matches"]
    lines.append(f"| matches of the last 15-day query | {ours_n} | {theirs_n} |")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.qido_wado",
        description="Load the same studies into `radnode api` and Orthanc (DICOMweb plugin), "
        "then time QIDO-RS searches and a WADO-RS series retrieval on each.",
    )
    parser.add_argument("--studies", type=int, default=2000, help="one-instance studies (2000)")
    parser.add_argument("--slices", type=int, default=300, help="instances of the big series")
    parser.add_argument("--queries", type=int, default=50, help="requests per QIDO measurement")
    parser.add_argument("--rounds", type=int, default=5, help="WADO-RS / metadata repetitions")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "radnode-bench",
        help="where the data dirs go (a new folder per run)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args.work_dir, args.studies, args.slices, args.queries, args.rounds)
    print(report(result))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
