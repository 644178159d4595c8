"""Several receiver processes on one DICOM port (``scp_processes``; the parent accepts and
hands each connection to the least busy receiver): real ``radnode scp`` processes, dcmtk and
pynetdicom peers, the shared SQLite index."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ai_node.synth import StudySpec, write_study
from radnode.assembly import build_node
from radnode.scp_pool import ScpPool, ScpPoolError, available_cpus, process_count
from radnode_core.settings import Settings
from radnode_core.store import CLEAN_SHUTDOWN_MARKER
from tests.support.processes import free_port
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import Pki, make_pki
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PROCESSES = 2
STUDIES = 8


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, list[Path]]]:
    """Eight small CT studies, one per modality association."""
    out = []
    for i in range(STUDIES):
        study, files = write_study(
            StudySpec(region="chest", slices=6, seed=300 + i, rows=64, columns=64),
            tmp_path_factory.mktemp(f"study{i}"),
        )
        out.append((study.study_instance_uid, files))
    return out


def receivers(parent: int) -> set[int]:
    """The receiver processes of ``parent`` (multiprocessing's spawned children)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_pool(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> RadnodeProcess:
    node = RadnodeProcess(
        data_dir, "scp", "--scp-processes", str(PROCESSES), "--log-format", "text", *extra, env=env
    )
    node.start()
    wait_for(
        lambda: "receiver processes listening" in node.log(),
        timeout=120,
        what="every receiver process",
        interval=0.1,
    )
    assert node.proc is not None
    assert len(receivers(node.proc.pid)) == PROCESSES
    return node


@pytest.fixture
def pool(tmp_path: Path):
    node = start_pool(tmp_path / "data")
    yield node
    node.stop()


def index(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "index.sqlite3")


def transfer_pids(data_dir: Path) -> set[int]:
    """The process ids that audited a received study (110104, action C)."""
    pids: set[int] = set()
    for path in (data_dir / "audit").glob("audit-*.log"):
        for line in path.read_text().splitlines():
            if 'csd-code="110104"' in line and 'EventActionCode="C"' in line:
                pids.update(int(p) for p in re.findall(r'AlternativeUserID="(\d+)"', line))
    return pids


def send_all_at_once(port: int, studies: list[tuple[str, list[Path]]]) -> None:
    exe = require_tool("storescu")
    procs = [
        subprocess.Popen(
            [
                exe,
                "-aet",
                f"MODALITY{i}",
                "-aec",
                "RADNODE",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dcmtk_env(),
        )
        for i, (_uid, files) in enumerate(studies)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out


def echo(port: int, *args: str, aet: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), *args, "-aet", aet, "-aec", "RADNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )


def test_eight_concurrent_modalities_stored_and_indexed_once_one_job_per_study(
    pool: RadnodeProcess, studies: list[tuple[str, list[Path]]]
) -> None:
    assert pool.proc is not None
    children = receivers(pool.proc.pid)
    send_all_at_once(pool.dicom_port, studies)

    sent = sum(len(files) for _uid, files in studies)
    assert len(list((pool.data_dir / "studies").rglob("*.dcm"))) == sent
    db = index(pool.data_dir)
    assert db.execute(
        "select count(*), count(distinct sop_instance_uid) from instances"
    ).fetchone() == (sent, sent)
    assert db.execute("select sum(duplicates) from instances").fetchone()[0] == 0
    # Each release queues its study in the receiver that served it: one job per study.
    expected = sorted((uid, len(files), "released") for uid, files in studies)
    wait_for(
        lambda: db.execute("select count(*) from jobs").fetchone()[0] == STUDIES,
        timeout=10,
        what="a job per study",
        interval=0.05,
    )
    time.sleep(2.5)  # past the quiet period: the parent's sweeper adds no second job
    assert sorted(db.execute("select study_uid, version, reason from jobs")) == expected

    # The kernel spread the associations: every audited transfer came from a receiver, and
    # (sending one more study while only one has served, 1 in 2**k to need k more) both did.
    extra = iter(studies)
    while len(transfer_pids(pool.data_dir)) < PROCESSES:
        _uid, files = next(extra)
        assert storescu(pool.dicom_port, files[:1]).returncode == 0
    assert transfer_pids(pool.data_dir) == children


def test_a_killed_receiver_is_restarted_and_the_port_keeps_answering(
    tmp_path: Path, studies: list[tuple[str, list[Path]]]
) -> None:
    node = start_pool(tmp_path / "data")
    try:
        assert node.proc is not None
        before = receivers(node.proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        # The survivor takes every new connection while the victim restarts.
        for _ in range(5):
            assert echo(node.dicom_port).returncode == 0
        wait_for(
            lambda: len(receivers(node.proc.pid) - {victim}) == PROCESSES,  # type: ignore[union-attr]
            timeout=30,
            what="the receiver's restart",
            interval=0.1,
        )
        wait_for(
            lambda: node.log().count("receiver process started") == PROCESSES + 1,
            timeout=120,
            what="the new receiver to listen",
            interval=0.1,
        )
        assert "receiver process ended; restarting it" in node.log()
        uid, files = studies[0]
        assert storescu(node.dicom_port, files).returncode == 0
        db = index(node.data_dir)
        assert db.execute("select count(*) from instances where study_uid=?", (uid,)).fetchone()[
            0
        ] == len(files)
    finally:
        assert node.stop() == 0
    # A receiver crashed: the store is reconciled at the next start, not marked clean.
    assert not (node.data_dir / CLEAN_SHUTDOWN_MARKER).exists()


def test_sigterm_lets_a_study_finish_stops_every_receiver_and_marks_a_clean_shutdown(
    tmp_path: Path, studies: list[tuple[str, list[Path]]], chest_study
) -> None:
    node = start_pool(tmp_path / "data")
    assert node.proc is not None
    children = receivers(node.proc.pid)
    send_all_at_once(node.dicom_port, studies[:2])
    _study, files = chest_study
    sending = subprocess.Popen(
        [
            require_tool("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            "RADNODE",
            "127.0.0.1",
            str(node.dicom_port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
    )
    db = index(node.data_dir)
    before = sum(len(files) for _uid, files in studies[:2])
    wait_for(
        lambda: db.execute("select count(*) from instances").fetchone()[0] > before + 2,
        timeout=60,
        what="the study's first instances",
        interval=0.02,
    )
    node.proc.send_signal(signal.SIGTERM)
    assert db.execute("select count(*) from instances").fetchone()[0] < before + len(files)
    assert node.stop() == 0
    out, _ = sending.communicate(timeout=60)
    # The study under way when SIGTERM came was let finish: every instance acknowledged.
    assert sending.returncode == 0, out
    assert db.execute("select count(*) from instances").fetchone()[0] == before + len(files)
    assert not any(alive(pid) for pid in children)
    assert (node.data_dir / CLEAN_SHUTDOWN_MARKER).exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.dicom_port), timeout=2).close()


def test_a_receiver_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    node = start_pool(tmp_path / "data")
    assert node.proc is not None
    children = receivers(node.proc.pid)
    node.kill()
    wait_for(
        lambda: not any(alive(pid) for pid in children),
        timeout=15,
        what="the orphaned receivers to stop",
        interval=0.1,
    )


def holder(client_port: int, port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server end of the TCP connection from ``client_port`` to
    ``port`` on this host (/proc/net/tcp names its socket, /proc/<pid>/fd who holds it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and (
                int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


def test_each_association_goes_to_the_least_busy_receiver(pool: RadnodeProcess) -> None:
    assert pool.proc is not None
    pids = receivers(pool.proc.pid)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    held: list[tuple[Association, int, int]] = []

    def associate() -> int:
        assoc = ae.associate("127.0.0.1", pool.dicom_port, ae_title="RADNODE")
        assert assoc.is_established
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        client_port = assoc.dul.socket.socket.getsockname()[1]
        pid = wait_for(
            lambda: holder(client_port, pool.dicom_port, pids), timeout=10, what="its receiver"
        )
        held.append((assoc, pid, client_port))
        return pid

    try:
        first, second = associate(), associate()
        assert first != second  # an idle receiver before a busy one
        third = associate()
        # Release the association of the receiver that did not get the third: it then
        # serves none, the other two. The next two must both go to it.
        idle = second if third == first else first
        assoc, _pid, client_port = next(h for h in held if h[1] == idle)
        assoc.release()
        wait_for(
            lambda: holder(client_port, pool.dicom_port, {idle}) is None,
            timeout=10,
            what="the released connection to close",
        )
        time.sleep(0.5)  # the receiver reports its load right after it closes the connection
        assert [associate(), associate()] == [idle, idle]
        # Four associations on two receivers: two each.
        serving = [pid for assoc, pid, _port in held if assoc.is_established]
        assert sorted(serving.count(pid) for pid in pids) == [2, 2]
    finally:
        for assoc, _pid, _port in held:
            if assoc.is_established:
                assoc.release()


def test_tls_port_and_allow_list_in_every_receiver(
    tmp_path: Path, studies: list[tuple[str, list[Path]]]
) -> None:
    pki: Pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    env = {
        "RADNODE_DICOM_TLS_PORT": str(tls_port),
        "RADNODE_TLS_CERT_FILE": str(pki.server_cert),
        "RADNODE_TLS_KEY_FILE": str(pki.server_key),
        "RADNODE_TLS_CA_FILE": str(pki.ca),
        "RADNODE_TLS_REQUIRE_CLIENT_CERT": "true",
    }
    node = start_pool(tmp_path / "data", "--allow", "MODALITY", env=env)
    try:
        tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
        # One connection at a time, the receivers take turns (a tie goes to the one handed
        # a connection longest ago), so each answers each kind of request.
        for _ in range(2):
            assert echo(tls_port, *tls).returncode == 0
            assert echo(node.dicom_port).returncode == 0
            assert echo(node.dicom_port, aet="INTRUDER").returncode != 0
            assert echo(tls_port, "+tla", "+cf", str(pki.ca)).returncode != 0
        _uid, files = studies[0]
        assert storescu(tls_port, files, *tls).returncode == 0
        log = node.log()
        served = "DICOM TLS SCP serving the connections its dispatcher hands over"
        assert log.count(served) == PROCESSES
    finally:
        assert node.stop() == 0


def test_scp_processes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADNODE_SCP_PROCESSES", "auto")
    assert process_count(Settings()) == available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("RADNODE_SCP_PROCESSES", "3")
    assert process_count(Settings()) == 3
    monkeypatch.setenv("RADNODE_SCP_PROCESSES", "0")
    with pytest.raises(ValueError):
        Settings()


def test_systems_that_cannot_pass_sockets_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(socket, "send_fds")
    node = build_node(Settings(data_dir=tmp_path))
    try:
        with pytest.raises(ScpPoolError, match=r"passes sockets between processes .*= 1"):
            ScpPool(node, 2)
    finally:
        node.close()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_serve_with_receiver_processes_and_their_metrics(
    tmp_path: Path, studies: list[tuple[str, list[Path]]]
) -> None:
    metrics_port = free_port()
    while any(port_in_use(metrics_port + k) for k in range(1, PROCESSES + 1)):
        metrics_port = free_port()
    node = RadnodeProcess(
        tmp_path / "data",
        "serve",
        "--scp-processes",
        str(PROCESSES),
        "--log-format",
        "text",
        env={"RADNODE_METRICS_PORT": str(metrics_port)},
    )
    node.start()
    try:
        wait_for(
            lambda: "receiver processes listening" in node.log(),
            timeout=120,
            what="every receiver process",
            interval=0.1,
        )
        send_all_at_once(node.dicom_port, studies[:4])
        sent = sum(len(files) for _uid, files in studies[:4])
        received = 'radnode_instances_received_total{source="dimse"}'
        per_receiver = [
            metric(get(f"http://127.0.0.1:{metrics_port + k}/metrics"), received)
            for k in range(1, PROCESSES + 1)
        ]
        assert sum(per_receiver) == sent
        parent = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metric(parent, "radnode_scp_process_restarts_total") == 0
        assert metric(parent, 'radnode_index_objects{level="instances"}') >= sent
    finally:
        assert node.stop() == 0
    assert (node.data_dir / CLEAN_SHUTDOWN_MARKER).exists()


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
