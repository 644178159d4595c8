"""Load: many concurrent associations, thousands of short ones, and idle TCP connects.

Times are recorded (docs/reliability.md), never asserted: the machine is shared.
"""

from __future__ import annotations

import copy
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from ai_node.synth import StudySpec, generate_study
from tests.support.radnode_process import RadnodeProcess
from tests.support.reliability import (
    assert_store_consistent,
    fd_count,
    percentile,
    record,
    rss_kib,
    scale,
)
from tests.support.scu_raw import settle
from tests.support.wait import wait_for

CONCURRENT = scale(10, 50)
DURATION_S = scale(15.0, 120.0)
ASSOCIATIONS = scale(200, 5000)
ASSOCIATIONS_WARM_UP = scale(100, 500)  # before the RSS/fd baseline
BARE_CONNECTS = scale(200, 1000)
ENV = {"RADNODE_MAX_ASSOCIATIONS": "64", "RADNODE_ACSE_TIMEOUT_S": "3"}


@pytest.fixture(scope="module")
def template() -> Dataset:
    """A small CT slice (64 x 64) whose SOP Instance UID each send replaces."""
    _study, datasets = generate_study(StudySpec(region="chest", slices=1, seed=5, rows=64,
                                                columns=64, pixel_spacing_mm=5.6))
    return next(iter(datasets))


@pytest.fixture
def node(tmp_path) -> Iterator[RadnodeProcess]:
    """`radnode scp` with room for 50 concurrent associations and a 3 s ACSE timeout."""
    scp = RadnodeProcess(tmp_path / "data", "scp", env=ENV).start()
    assert scp.proc is not None
    yield scp
    scp.stop()


def _ae(ae_title: str = "LOADGEN") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_requested_context(Verification)
    return ae


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def test_concurrent_associations_send_without_a_failure(node: RadnodeProcess, template):
    latencies: list[float] = []
    set_up: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION_S
    start = threading.Barrier(CONCURRENT)

    def sender(n: int) -> None:
        ae = _ae(f"MODALITY{n:02d}")  # one modality each: max_associations_per_aet applies
        ds = copy.deepcopy(template)  # pydicom sets values in place: one copy per thread
        try:
            start.wait(timeout=60)
            asked = time.perf_counter()
            assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="RADNODE")
            with lock:
                set_up.append(time.perf_counter() - asked)
            if not assoc.is_established:
                with lock:
                    failures.append(f"sender {n}: association not established")
                return
            i = 0
            mine = []
            while time.monotonic() < stop_at:
                i += 1
                ds.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
                settle(assoc)  # pynetdicom's own SCU race, not radnode's time
                began = time.perf_counter()
                rsp = assoc.send_c_store(ds)
                mine.append(time.perf_counter() - began)
                status = int(rsp.Status) if "Status" in rsp else -1
                if status != 0:
                    with lock:
                        failures.append(f"sender {n} #{i}: status {status:#06x}")
            assoc.release()
            with lock:
                latencies.extend(mine)
        except Exception as exc:  # noqa: BLE001 - any exception is a failure to report
            with lock:
                failures.append(f"sender {n}: {type(exc).__name__}: {exc}")

    assert node.proc is not None
    server_cpu = _cpu_s(node.proc.pid)
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    threads = [threading.Thread(target=sender, args=(n,)) for n in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_S + 180)
    elapsed = time.monotonic() - began
    server_cpu = _cpu_s(node.proc.pid) - server_cpu
    used = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = used.ru_utime + used.ru_stime - client_before.ru_utime - client_before.ru_stime
    assert failures == [], failures[:20]
    assert node.proc.poll() is None
    stored = assert_store_consistent(node.data_dir)
    assert stored == len(latencies) > 0
    figures = {
        "associations": CONCURRENT, "seconds": round(elapsed, 1), "stores": len(latencies),
        "failures": len(failures), "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "set_up_p50_ms": round(percentile(set_up, 50) * 1000, 1),
        "set_up_max_ms": round(max(set_up) * 1000, 1),
        "server_cpu_s": round(server_cpu, 1), "client_cpu_s": round(client_cpu, 1),
    }
    record("load_concurrent", **figures)
    print(figures)


def test_memory_and_fds_steady_over_many_associations(node: RadnodeProcess, template):
    assert node.proc is not None
    pid = node.proc.pid
    failures: list[str] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def run(count: int, workers: int = 4) -> None:
        def work() -> None:
            ae = _ae()
            ds = copy.deepcopy(template)
            for _ in range(count // workers):
                with lock:
                    i = next(counter)
                try:
                    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="RADNODE")
                    ds.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
                    rsp = assoc.send_c_store(ds)
                    if int(rsp.get("Status", -1)) != 0:
                        failures.append(f"association {i}: {rsp.get('Status')}")
                    assoc.release()
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(f"association {i}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)

    run(ASSOCIATIONS_WARM_UP)
    time.sleep(1.0)  # let the warm-up's associations wind down before the baseline
    rss_before, fds_before, threads_before = rss_kib(pid), fd_count(pid), _threads(pid)
    began = time.monotonic()
    run(ASSOCIATIONS)
    elapsed = time.monotonic() - began
    wait_for(lambda: _threads(pid) <= threads_before, timeout=30, what="threads to end")
    rss_after, fds_after = rss_kib(pid), fd_count(pid)
    assert failures == [], failures[:20]
    growth = (rss_after - rss_before) / rss_before
    record("load_many_associations", associations=ASSOCIATIONS,
           warm_up=ASSOCIATIONS_WARM_UP, seconds=round(elapsed, 1),
           rss_before_kib=rss_before, rss_after_kib=rss_after, rss_growth=round(growth, 4),
           fds_before=fds_before, fds_after=fds_after)
    # Bounded, not per association: the index's connection pool may open one more SQLite
    # connection under load (3 fds each: database, WAL, shared memory) and keeps it; a
    # leak of even one fd per 20 associations would exceed this.
    assert fds_after <= fds_before + 9, (fds_before, fds_after)
    assert growth < 0.10, (rss_before, rss_after)
    assert assert_store_consistent(node.data_dir) == ASSOCIATIONS_WARM_UP // 4 * 4 + \
        ASSOCIATIONS // 4 * 4


def test_bare_tcp_connects_that_send_nothing_do_not_leak(node: RadnodeProcess, template):
    assert node.proc is not None
    pid = node.proc.pid
    assoc = _ae().associate("127.0.0.1", node.dicom_port, ae_title="RADNODE")
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    time.sleep(1.0)  # let the association wind down before the baseline
    fds_before, threads_before = fd_count(pid), _threads(pid)
    held: list[socket.socket] = []
    began = time.monotonic()
    peak_fds = fds_before
    for n in range(BARE_CONNECTS):
        s = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
        if n % 2:
            s.close()  # connect and hang up at once
        else:
            held.append(s)  # connect and stay silent until the server gives up
        if len(held) >= 50:  # the server times these out (ARTIM = ACSE timeout, 3 s)
            peak_fds = max(peak_fds, fd_count(pid))
            for s in held:
                s.settimeout(30)
                assert s.recv(1) == b"", "the server sent something to a silent peer"
                s.close()
            held.clear()
    for s in held:
        s.settimeout(30)
        assert s.recv(1) == b""
        s.close()
    wait_for(lambda: _threads(pid) <= threads_before and fd_count(pid) <= fds_before + 2,
             timeout=60, what="connections to be closed")
    fds_after = fd_count(pid)
    elapsed = time.monotonic() - began
    # ... and the server still answers.
    assoc = _ae().associate("127.0.0.1", node.dicom_port, ae_title="RADNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    record("load_bare_connects", connects=BARE_CONNECTS, seconds=round(elapsed, 1),
           fds_before=fds_before, fds_peak=peak_fds, fds_after=fds_after)
    assert fds_after <= fds_before + 2
    assert node.proc is not None and node.proc.poll() is None
