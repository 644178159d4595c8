"""``python -m benchmarks.qr``: DIMSE Query/Retrieve, radnode vs Orthanc, in one run.

Both peers hold the same data, loaded before timing: ``studies`` one-instance studies over
300 days and about two studies per patient, and one study with a ``slices``-instance
512x512 CT series (the data of ``benchmarks.qido_wado``). radnode runs as ``radnode scp``
(SQLite index, its store filled through the C-STORE ingest path); Orthanc from Debian
(SQLite index, loaded through its REST API). One pynetdicom SCU, its socket without
Nagle's algorithm, times each C-FIND (Study Root, STUDY level, the keys a workstation's
study list asks for) from the request to the final response, over one association per
peer; then each peer moves the big series by C-MOVE to the same dcmtk storescp, which
writes the instances as received (no fsync). dcmtk's processes (Orthanc, storescp) run
with ``TCP_NODELAY=1`` in their environment (without it dcmtk stalls ~45 ms per message).
radnode is measured once it is idle: the analysis of every loaded study queued.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from benchmarks.ingest import STORESCP_FLAGS, machine_info, radnode_exe, require, versions
from benchmarks.qido_wado import DAYS, FIRST_DAY, BenchData, load_orthanc, load_radnode, make_data
from tests.support.dicomweb_peer import OrthancDicomWeb
from tests.support.processes import free_port, stop_process, wait_port
from tests.support.scu_raw import settle

RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
    "StudyInstanceUID",
)
"""Returned by every C-FIND: the columns of a workstation's study list."""

DESTINATION = "BENCHDEST"
FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
SCU = "BENCHSCU"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the peers ---------------------------------------------------------------------------


class OrthancQr(OrthancDicomWeb):
    """Orthanc answering C-FIND and C-MOVE for the benchmark's SCU, moving to storescp."""

    def __init__(self, work_dir: Path, destination_port: int) -> None:
        super().__init__(work_dir)
        self.destination_port = destination_port

    def config(self) -> dict[str, object]:
        config = super().config()
        config["DicomModalities"] = {
            "scu": [SCU, "127.0.0.1", 104],  # it never calls back
            "dest": [DESTINATION, "127.0.0.1", self.destination_port],
        }
        return config


@dataclass
class Storescp:
    """The C-MOVE destination of both peers."""

    out: Path
    port: int
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, out: Path) -> Storescp:
        out.mkdir(parents=True)
        port = free_port()
        proc = subprocess.Popen(
            [require("storescp"), *STORESCP_FLAGS, "-aet", DESTINATION, "-od", str(out), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_dcmtk_env(),
        )
        wait_port(port, proc)
        return cls(out, port, proc)

    def clear(self) -> None:
        for path in self.out.iterdir():
            path.unlink()

    def received(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file())


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def _radnode_env(destination_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
    destinations = [{"ae_title": DESTINATION, "host": "127.0.0.1", "port": destination_port}]
    env["RADNODE_MOVE_DESTINATIONS"] = json.dumps(destinations)
    return env


def _environment_line(name: str, command: Sequence[str], env: dict[str, str]) -> str:
    shown = {k: v for k, v in env.items() if k.startswith("RADNODE_") or k == "TCP_NODELAY"}
    words = " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(none set)"
    return f"{name}: `{' '.join(command)}`, environment: {words}"


# -- measurements -------------------------------------------------------------------------


def _nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _associate(port: int, aet: str, context: str) -> Any:
    ae = AE(ae_title=SCU)
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    if not assoc.is_established:
        raise RuntimeError(f"{aet} on port {port} refused the association")
    return assoc


def _study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


def query_shapes(data: BenchData, rng: random.Random) -> dict[str, Callable[[], Dataset]]:
    """Each query shape: a function giving its next request (the same sequence per peer)."""

    def date_range() -> Dataset:
        first = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS - 15))
        last = first + dt.timedelta(days=14)
        return _study_query(StudyDate=f"{first:%Y%m%d}-{last:%Y%m%d}")

    return {
        "PatientID=<id>": lambda: _study_query(PatientID=rng.choice(data.patient_ids)),
        "StudyDate=<15 days>": date_range,
        "PatientName=<prefix>*": lambda: _study_query(
            PatientName=f"bench^patient00{rng.randrange(100):02d}*"
        ),
        "all studies": lambda: _study_query(),
    }


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000}


def measure_find(port: int, aet: str, data: BenchData, queries: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    assoc = _associate(port, aet, FIND)
    try:
        list(assoc.send_c_find(_study_query(PatientID="none"), FIND))  # warms both ends
        for name, make in query_shapes(data, random.Random(seed)).items():
            repeat = queries if name != "all studies" else max(1, queries // 10)
            times, matches = [], []
            for _ in range(repeat):
                request = make()
                settle(assoc)
                started = time.perf_counter()
                # A response without a Status: the association was aborted or timed out.
                statuses = [
                    int(s.get("Status", 0xFFFF)) for s, _ in assoc.send_c_find(request, FIND)
                ]
                times.append(time.perf_counter() - started)
                if statuses[-1] != 0x0000:
                    raise RuntimeError(f"{aet}: C-FIND {name} ended 0x{statuses[-1]:04X}")
                matches.append(len(statuses) - 1)
            out[name] = {**_summary(times), "matches": sum(matches), "queries": repeat}
    finally:
        assoc.release()
    return out


def measure_move(
    port: int, aet: str, data: BenchData, destination: Storescp, rounds: int
) -> dict[str, Any]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = data.series_study_uid
    identifier.SeriesInstanceUID = data.series_uid
    times: list[float] = []
    for _ in range(rounds):
        destination.clear()
        assoc = _associate(port, aet, MOVE)
        try:
            started = time.perf_counter()
            responses = list(assoc.send_c_move(identifier, DESTINATION, MOVE))
            elapsed = time.perf_counter() - started
        finally:
            assoc.release()
        final = responses[-1][0]
        completed = int(final.get("NumberOfCompletedSuboperations", 0))
        if int(final.Status) != 0x0000 or completed != len(data.series):
            raise RuntimeError(f"{aet}: C-MOVE ended 0x{int(final.Status):04X}, {completed} sent")
        received = destination.received()
        if received != len(data.series):
            raise RuntimeError(f"{aet}: storescp received {received} of {len(data.series)}")
        times.append(elapsed)
    median = statistics.median(times)
    return {
        "times_s": times,
        "median_s": median,
        "mb_s": data.series_bytes / median / 1e6,
        "instances": len(data.series),
    }


# -- the run ------------------------------------------------------------------------------


def run(
    work_dir: Path, studies: int, slices: int, queries: int, rounds: int, seed: int = 1
) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = work_dir / f"qr-{stamp}-{os.getpid()}"
    run_dir.mkdir()
    info, vers = machine_info(), versions()
    log(f"generating {studies} studies + a {slices}-slice series ...")
    data = make_data(studies, slices, seed)
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "studies": studies + 1,
        "series_instances": slices,
        "series_mb": data.series_bytes / 1e6,
        "queries": queries,
        "rounds": rounds,
        "machine": info,
        "versions": vers,
        "environment": {},
    }
    destination = Storescp.start(run_dir / "storescp")
    result["environment"]["storescp"] = _environment_line(
        "storescp (C-MOVE destination)",
        ["storescp", *STORESCP_FLAGS, "-aet", DESTINATION, "-od", "DIR", "PORT"],
        _dcmtk_env(),
    )
    try:
        log("loading radnode ...")
        load_radnode(run_dir / "radnode-data", data)
        port = free_port()
        command = [
            radnode_exe(),
            "scp",
            "--data-dir",
            str(run_dir / "radnode-data"),
            "--dicom-port",
            str(port),
            "--aet",
            "RADNODE",
            "--log-level",
            "WARNING",
        ]
        env = _radnode_env(destination.port)
        result["environment"]["radnode"] = _environment_line("radnode", command, env)
        with (run_dir / "radnode.log").open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_port(port, proc)
            _wait_until_idle(run_dir / "radnode-data", studies + 1, proc)
            log("radnode: C-FIND ...")
            result["radnode"] = {"find": measure_find(port, "RADNODE", data, queries, seed)}
            log("radnode: C-MOVE ...")
            result["radnode"]["move"] = measure_move(port, "RADNODE", data, destination, rounds)
        finally:
            stop_process(proc)
        with OrthancQr(run_dir / "orthanc", destination.port) as orthanc:
            result["environment"]["orthanc"] = _environment_line(
                "orthanc", ["/usr/sbin/Orthanc", "orthanc.json"], dict(os.environ)
            )
            log("loading Orthanc ...")
            load_orthanc(orthanc, data)
            log("orthanc: C-FIND ...")
            result["orthanc"] = {
                "find": measure_find(orthanc.dicom_port, "ORTHANC", data, queries, seed)
            }
            log("orthanc: C-MOVE ...")
            result["orthanc"]["move"] = measure_move(
                orthanc.dicom_port, "ORTHANC", data, destination, rounds
            )
    finally:
        stop_process(destination.proc)
    shutil.rmtree(run_dir, ignore_errors=True)  # kept after a failure, with the peers' logs
    return result


def _wait_until_idle(data_dir: Path, studies: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until `radnode scp` has queued the analysis of every loaded study: its
    completion sweeper finds them all due at start and queues them one write at a time,
    and on SQLite every query waits for those writes."""
    deadline = time.monotonic() + 600
    with sqlite3.connect(data_dir / "index.sqlite3", timeout=30) as db:
        while db.execute("SELECT count(*) FROM jobs").fetchone()[0] < studies:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("radnode scp did not queue the loaded studies")
            time.sleep(0.5)


def report(result: dict[str, Any]) -> str:
    info, vers = result["machine"], result["versions"]
    lines = [
        f"Result of {result['date']}: {result['studies']} studies; a series of "
        f"{result['series_instances']} instances ({result['series_mb']:.0f} MB); "
        f"{result['queries']} C-FINDs per shape (all studies: a tenth), "
        f"{result['rounds']} C-MOVE round(s).",
        "",
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
        f"Python {info['python']}.",
        f"Versions: {vers['radnode']}; {vers['storescu']}; {vers['orthanc']}.",
        "",
        *(f"- {line}" for line in result["environment"].values()),
        "",
        "| measurement | radnode | Orthanc | radnode / Orthanc |",
        "|---|---:|---:|---:|",
    ]
    ours, theirs = result["radnode"], result["orthanc"]
    for shape in ours["find"]:
        a, b = ours["find"][shape], theirs["find"][shape]
        for key, label in (("median_ms", "median ms"), ("p95_ms", "p95 ms")):
            lines.append(
                f"| C-FIND STUDY {shape}, {label} | {a[key]:.1f} | {b[key]:.1f} "
                f"| {a[key] / b[key]:.2f} |"
            )
        lines.append(
            f"| C-FIND STUDY {shape}, matches per query | {a['matches'] / a['queries']:.1f} "
            f"| {b['matches'] / b['queries']:.1f} | |"
        )
    a, b = ours["move"], theirs["move"]
    lines.append(
        f"| C-MOVE series to storescp, median s | {a['median_s']:.2f} | {b['median_s']:.2f} "
        f"| {a['median_s'] / b['median_s']:.2f} |"
    )
    lines.append(
        f"| C-MOVE series to storescp, MB/s | {a['mb_s']:.0f} | {b['mb_s']:.0f} "
        f"| {a['mb_s'] / b['mb_s']:.2f} |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.qr",
        description="Load the same studies into `radnode scp` and Orthanc, then time C-FIND "
        "at the STUDY level and the C-MOVE of a series to one storescp on each.",
    )
    parser.add_argument("--studies", type=int, default=2000, help="one-instance studies (2000)")
    parser.add_argument("--slices", type=int, default=300, help="instances of the moved series")
    parser.add_argument("--queries", type=int, default=50, help="C-FINDs per query shape (50)")
    parser.add_argument("--rounds", type=int, default=3, help="C-MOVE rounds per peer (3)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "radnode-bench",
        help="where the peers' data go (a new folder per run, removed after it)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.studies, args.slices, args.queries, args.rounds) < 1:
        parser.error("--studies, --slices, --queries and --rounds must be at least 1")
    os.environ["TCP_NODELAY"] = "1"  # Orthanc's dcmtk network library reads it
    result = run(args.work_dir, args.studies, args.slices, args.queries, args.rounds)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
