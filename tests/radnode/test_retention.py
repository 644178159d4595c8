"""Storage retention: originals deleted N days after delivery and never before, SRs and
labelled studies kept, consistent through a crash mid-cleanup, admin deletion audited,
and on a real full tmpfs the cleanup keeps ingest accepting."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ai_node.tables import results
from dicomweb.app import create_app
from radnode.assembly import build_node
from radnode_core.index import instances, studies
from radnode_core.ingest import IngestError
from radnode_core.node import Node
from radnode_core.retention import JOURNAL_PREFIX, _forget
from radnode_core.settings import Settings
from tests.support.retention import (
    PEER,
    StoredStudy,
    days_ago,
    deliver,
    exported,
    label,
    store_study,
)
from tests.support.viewer import ADMIN, RADIOLOGIST, VIEWER
from tests.support.wait import wait_for

PEERS = [{"name": PEER, "dicomweb_url": "http://127.0.0.1:9/dicom-web"}]


def _node(data_dir: Path, **extra: Any) -> Node:
    settings: dict[str, Any] = {
        "data_dir": data_dir,
        "fsync": False,
        "pacs_peers": PEERS,
        "retention_enabled": True,
        "retention_days": 30,
    } | extra
    return build_node(Settings(**settings))


def _indexed(node: Node, study: StoredStudy) -> set[str]:
    with node.index.engine.connect() as conn:
        return set(
            conn.execute(
                select(instances.c.sop_instance_uid).where(instances.c.study_uid == study.study_uid)
            ).scalars()
        )


def _files(node: Node, study: StoredStudy) -> set[str]:
    folder = node.store.studies_dir / study.study_uid
    return {p.stem for p in folder.rglob("*.dcm")} if folder.exists() else set()


def _audit_lines(data_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((data_dir / "audit").glob("audit-*.log")))


def _assert_consistent(node: Node) -> None:
    """Every indexed path has its file and every file is indexed."""
    indexed = node.index.instance_paths()
    on_disk = {
        p.relative_to(node.store.data_dir).as_posix() for p in node.store.studies_dir.rglob("*.dcm")
    }
    assert indexed == on_disk


@pytest.fixture
def node(tmp_path: Path):
    n = _node(tmp_path / "data")
    yield n
    n.close()


def test_originals_go_after_delivery_and_days_srs_and_labels_stay(node: Node, tmp_path) -> None:
    old = store_study(node)
    recent = store_study(node)
    undelivered = store_study(node)
    labelled = store_study(node)
    labelled_exported = store_study(node)
    deliver(node, old, days_ago(40))
    deliver(node, recent, days_ago(2))
    deliver(node, undelivered, None)
    for s in (labelled, labelled_exported):
        deliver(node, s, days_ago(40))
    label(node, labelled_exported)
    exported(node, label(node, labelled_exported))  # exported up to its newest label
    label(node, labelled)  # newer than the export

    report = node.retention.run_once()

    assert report.deleted == {"age": 2}
    assert report.kept == {"undelivered": 1, "labelled": 1, "recent": 1}
    assert report.reclaimed_bytes > 0
    for gone in (old, labelled_exported):
        assert _indexed(node, gone) == {gone.sr_uid}  # the SR stays
        assert _files(node, gone) == {gone.sr_uid}
        row = node.index.get_study(gone.study_uid)
        assert row is not None and row["num_instances"] == 1
    for kept in (recent, undelivered, labelled):
        assert _indexed(node, kept) == {*kept.originals, kept.sr_uid}
        assert _files(node, kept) == {*kept.originals, kept.sr_uid}
    _assert_consistent(node)
    audit = _audit_lines(tmp_path / "data")
    assert audit.count('EventActionCode="D"') == 2
    assert 'csd-code="110103"' in audit and old.study_uid in audit

    summary = node.retention.summary()
    assert summary["studies_deleted"] == 2
    assert summary["reclaimed_bytes"] == report.reclaimed_bytes
    assert summary["studies_kept"] == {"undelivered": 1, "labelled": 1, "recent": 1}
    exposition = node.metrics.exposition().decode()
    assert 'radnode_retention_studies_deleted_total{reason="age"} 2.0' in exposition
    assert 'radnode_retention_studies_kept{reason="labelled"} 1.0' in exposition


def test_labelled_studies_have_their_own_longer_period(tmp_path: Path) -> None:
    node = _node(tmp_path / "data", retention_labelled_days=60)
    try:
        at_40, at_70 = store_study(node), store_study(node)
        deliver(node, at_40, days_ago(40))
        deliver(node, at_70, days_ago(70))
        label(node, at_40)
        label(node, at_70)
        report = node.retention.run_once()
        assert report.deleted == {"age": 1}
        assert _indexed(node, at_40) == {*at_40.originals, at_40.sr_uid}
        assert _indexed(node, at_70) == {at_70.sr_uid}
    finally:
        node.close()


def test_high_water_deletes_delivered_early_oldest_first(tmp_path: Path) -> None:
    node = _node(tmp_path / "data", min_free_bytes=0)
    older, newer, undelivered = store_study(node), store_study(node), store_study(node)
    deliver(node, older, days_ago(3))
    deliver(node, newer, days_ago(1))
    deliver(node, undelivered, None)

    def usage() -> tuple[int, int]:  # 95 % in use until one study is gone, then 50 %
        return (95, 100) if _indexed(node, older) != {older.sr_uid} else (50, 100)

    node.retention.disk_usage = usage
    report = node.retention.run_once()
    assert report.deleted == {"high_water": 1}
    assert _indexed(node, older) == {older.sr_uid}
    assert _indexed(node, newer) == {*newer.originals, newer.sr_uid}
    assert _indexed(node, undelivered) == {*undelivered.originals, undelivered.sr_uid}
    node.close()


@pytest.mark.parametrize("crash_after", ["mark", "index"])
def test_crash_mid_cleanup_is_finished_at_start(tmp_path: Path, crash_after: str) -> None:
    """The two crash points of a deletion: after the journal is written (nothing else
    done), and after the index forgot the instances but before their files went. The
    next start finishes the deletion before the store's reconciliation (an unclean stop)
    could index the files again."""
    data = tmp_path / "data"
    node = _node(data)
    study = store_study(node)
    kept = store_study(node)
    deleter = node.retention.deleter
    rows = deleter.instances_of(study.study_uid, originals_only=True)
    journal = deleter._write_journal(
        {
            "study_uid": study.study_uid,
            "whole_study": False,
            "instances": [[sop, path] for sop, path, _ in rows],
        }
    )
    if crash_after == "index":
        with node.index.transaction() as conn:
            _forget(conn, study.study_uid, [r[0] for r in rows], False)
        assert _files(node, study) == {*study.originals, study.sr_uid}  # orphans on disk
    node.close(clean=False)  # the process dies: no clean-shutdown marker

    restarted = _node(data)
    try:
        stats = restarted.recover()
        assert stats["deletions_finished"] == 1
        assert stats["indexed"] == 0  # reconciliation found no orphan to index again
        assert not journal.exists()
        assert _indexed(restarted, study) == {study.sr_uid}
        assert _files(restarted, study) == {study.sr_uid}
        assert _indexed(restarted, kept) == {*kept.originals, kept.sr_uid}
        _assert_consistent(restarted)
        assert not list(deleter.dir.glob(f"{JOURNAL_PREFIX}*"))
    finally:
        restarted.close()


def test_admin_deletes_series_and_study_by_dicomweb_and_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = _node(
        data,
        auth_enabled=True,
        api_tokens={ADMIN: "admin", RADIOLOGIST: "radiologist", VIEWER: "viewer"},
    )
    try:
        one, two = store_study(node), store_study(node)
        with node.index.transaction() as conn:
            conn.execute(
                results.insert().values(
                    study_uid=two.study_uid,
                    version=1,
                    model_name="finding",
                    status="done",
                    created_at=_now(),
                )
            )
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with TestClient(create_app(node)) as client:
            for token in (VIEWER, RADIOLOGIST):
                r = client.delete(
                    f"/dicom-web/studies/{one.study_uid}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 403, r.text
            ct_series = node.index.find_instance(one.originals[0])["series_uid"]  # type: ignore[index]
            r = client.delete(
                f"/dicom-web/studies/{one.study_uid}/series/{ct_series}", headers=admin
            )
            assert r.status_code == 204, r.text
            assert _indexed(node, one) == {one.sr_uid}
            r = client.delete(
                f"/dicom-web/studies/{one.study_uid}/series/{ct_series}", headers=admin
            )
            assert r.status_code == 404
            r = client.delete(f"/api/studies/{two.study_uid}", headers=admin)
            assert r.status_code == 204, r.text
            assert node.index.get_study(two.study_uid) is None
            assert _files(node, two) == set()
            qido = client.get("/dicom-web/studies", headers=admin)
            found = [s["0020000D"]["Value"][0] for s in qido.json()]
            assert two.study_uid not in found and one.study_uid in found
            assert client.delete(f"/api/studies/{two.study_uid}", headers=admin).status_code == 404
            assert client.delete("/api/studies/1.2.x", headers=admin).status_code == 400
            summary = client.get("/api/retention", headers=admin)
            assert summary.status_code == 200
            assert summary.json()["by_reason"]["studies_admin"] == 2
            assert (
                client.get(
                    "/api/retention", headers={"Authorization": f"Bearer {VIEWER}"}
                ).status_code
                == 403
            )
        _assert_consistent(node)
        with node.index.engine.connect() as conn:
            assert (
                conn.execute(select(results).where(results.c.study_uid == two.study_uid)).first()
                is None
            )
            assert conn.execute(select(studies.c.study_uid)).scalars().all() == [one.study_uid]
    finally:
        node.close()
    audit = _audit_lines(data)
    deletions = [line for line in audit.splitlines() if 'EventActionCode="D"' in line]
    assert len(deletions) == 2
    series_event, study_event = deletions
    assert 'csd-code="110103"' in series_event and one.study_uid in series_event
    assert 'csd-code="110105"' in study_event and two.study_uid in study_event
    assert "RET-1" in study_event  # the patient, read before the index forgot the study


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_cleanup_keeps_ingest_accepting_on_a_full_tmpfs(small_filesystem: Path) -> None:
    """A real 12 MiB tmpfs: ~36 MiB of studies arrive, each delivered at once; the cleanup
    (run after each study, as the periodic check would under pressure) deletes the
    oldest delivered ones above the high-water mark, every instance is accepted, and the
    undelivered and the labelled (not yet exported) studies survive it all."""
    data = small_filesystem / "data"
    node = _node(
        data,
        min_free_bytes=256 * 1024,
        retention_high_water=0.6,
        retention_low_water=0.4,
        retention_days=30,
    )
    try:
        undelivered = store_study(node, instances=4, side=256)
        deliver(node, undelivered, None)
        labelled = store_study(node, instances=4, side=256)
        deliver(node, labelled, days_ago(0))
        label(node, labelled)
        deleted = 0
        accepted = 0
        for _ in range(70):  # 70 x 4 x 128 KiB = 35 MiB through a 12 MiB filesystem
            try:
                study = store_study(node, instances=4, side=256)
            except IngestError as exc:  # pragma: no cover - the failure this test guards
                pytest.fail(f"ingest refused at {_free(small_filesystem)} bytes free: {exc}")
            accepted += 1
            deliver(node, study, days_ago(0))
            report = node.retention.run_once()
            deleted += sum(report.deleted.values())
            assert report.deleted.keys() <= {"high_water"}
        assert accepted == 70
        assert deleted > 30
        for survivor in (undelivered, labelled):
            assert _indexed(node, survivor) == {*survivor.originals, survivor.sr_uid}
            assert _files(node, survivor) == {*survivor.originals, survivor.sr_uid}
        _assert_consistent(node)
        history = (data / "retention" / "history.jsonl").read_text().splitlines()
        assert len(history) == deleted
        assert all(json.loads(line)["reason"] == "high_water" for line in history)
    finally:
        node.close()


CLEANUP_CHILD = """
import sys, time
from pathlib import Path
from radnode_core import retention
from radnode.assembly import build_node
from radnode_core.settings import Settings

data, marker = Path(sys.argv[1]), Path(sys.argv[2])
node = build_node(Settings(data_dir=data, fsync=True, pacs_peers=%r, retention_enabled=True))
node.recover()
removed = retention.Deleter._remove_empty_dirs

def stall(self, directory):  # the first file is gone, the others are not: be killed here
    removed(self, directory)
    marker.write_text("mid-cleanup")
    time.sleep(600)

retention.Deleter._remove_empty_dirs = stall
node.retention.run_once()
"""


def test_killed_mid_cleanup_then_restarted(tmp_path: Path) -> None:
    """A real crash: the cleanup process is killed (SIGKILL) after the index forgot a
    study's originals and one of their files went; the restarted node finishes it."""
    data = tmp_path / "data"
    node = _node(data)
    study, kept = store_study(node, instances=4), store_study(node)
    deliver(node, study, days_ago(40))
    deliver(node, kept, None)
    node.close()
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", CLEANUP_CHILD % (PEERS,), str(data), str(marker)],
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        wait_for(marker.exists, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    restarted = _node(data)
    try:
        assert list((data / "retention").glob(f"{JOURNAL_PREFIX}*.json"))
        assert 0 < len(_files(restarted, study)) < 5  # some files gone, some left
        stats = restarted.recover()
        assert stats["deletions_finished"] == 1 and stats["indexed"] == 0
        assert _indexed(restarted, study) == _files(restarted, study) == {study.sr_uid}
        assert _indexed(restarted, kept) == {*kept.originals, kept.sr_uid}
        _assert_consistent(restarted)
    finally:
        restarted.close()


def test_an_instance_after_the_delivery_keeps_the_study_until_its_new_result(node: Node) -> None:
    study = store_study(node)
    deliver(node, study, days_ago(40))
    with node.index.transaction() as conn:  # a late instance, received after the delivery
        conn.execute(
            studies.update()
            .where(studies.c.study_uid == study.study_uid)
            .values(last_received_at=_now().timestamp())
        )
    report = node.retention.run_once()
    assert not report.deleted and report.kept["undelivered"] == 1
    assert _indexed(node, study) == {*study.originals, study.sr_uid}


def test_the_periodic_cleanup_runs_in_its_thread(tmp_path: Path) -> None:
    node = _node(tmp_path / "data", retention_check_s=0.2)
    try:
        study = store_study(node)
        deliver(node, study, days_ago(31))
        node.retention.start()
        wait_for(lambda: _indexed(node, study) == {study.sr_uid}, timeout=30)
        node.retention.stop()
        assert node.retention._thread is None
    finally:
        node.retention.stop()
        node.close()


def test_low_water_must_be_below_high_water(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_low_water"):
        Settings(data_dir=tmp_path, retention_high_water=0.7, retention_low_water=0.7)
