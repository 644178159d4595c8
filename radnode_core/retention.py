"""Storage retention: the originals of delivered studies are deleted, the rest is kept.

An AI node receives every study its modalities send; without deletion its disk fills and
every store is refused (0xA700). The policy (settings ``retention_*``, docs/retention.md):

* a study's originals (every series but its SRs) are deleted ``retention_days`` after
  its result reached every PACS peer it was routed to, never before;
* SRs (the node's results, the radiologists' verified and amended reports), the
  ``results`` and ``feedback`` rows and the study's own row are kept;
* a study with a radiologist's label the retraining export has not yet taken is kept
  until it has (or, when ``retention_labelled_days`` is set, that long after delivery);
* above the high-water mark (``retention_high_water`` of the filesystem in use) delivered
  studies are deleted early, oldest delivery first, down to ``retention_low_water``,
  before the store reaches ``min_free_bytes`` and refuses.

Which studies were delivered and which are labelled is known to the features
(``pacs_link``'s outbox, ``ai_node``'s feedback and retraining runs); the assembly hands
them in as :class:`RetentionFacts`.

Deletion is crash-safe by a journal (mark, then delete): the instances to delete are
written to ``<data_dir>/retention/journal-*.json`` (fsynced) before the index forgets
them, the files go after the index commit, and the journal last. A journal found at the
next start (:meth:`Deleter.recover`, before the store's reconciliation, which would
otherwise index the orphaned files again) is carried through to the end. Every delete,
the policy's and an admin's (DICOMweb DELETE), is audited (PS3.15 A.5.3.6, A.5.3.8).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.engine import Connection

from radnode_core.audit import AuditTrail, StudyRef
from radnode_core.index import Index, instances, metadata, series, studies
from radnode_core.settings import Settings
from radnode_core.store import InstanceStore

logger = logging.getLogger(__name__)

DAY_S = 86400.0
JOURNAL_PREFIX = "journal-"
HISTORY = "history.jsonl"
_CHUNK = 500
KEPT_REASONS = ("undelivered", "labelled", "recent")
PRESSURE_POLL_S = 5.0
PRESSED_RETRY_S = 60.0  # above the mark with nothing deletable: look again this often


@dataclass(frozen=True)
class RetentionFacts:
    """What the features know: ``delivered()`` maps each study whose result reached every
    peer it was routed to onto when the last delivery happened (epoch seconds);
    ``held()`` is the set of studies with a label the retraining export has not taken."""

    delivered: Callable[[], dict[str, float]] = dict
    held: Callable[[], set[str]] = set


@dataclass
class CleanupReport:
    """One cleanup: studies whose originals were deleted (by reason), bytes reclaimed,
    studies kept (by reason) and the share of the filesystem in use before and after."""

    deleted: Counter[str] = field(default_factory=Counter)
    reclaimed_bytes: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    used_before: float = 0.0
    used_after: float = 0.0
    skipped: bool = False  # another process was cleaning up


@dataclass(frozen=True)
class Deletion:
    study_uid: str
    instances: int
    bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _forget(conn: Connection, study_uid: str, sop_uids: list[str], whole_study: bool) -> None:
    """Remove instances from the index, then their empty series; a whole study also loses
    its row and every row that refers to it (results, feedback, jobs: the tables the
    features declared on the shared metadata, dependents first). Idempotent."""
    for chunk in _chunks(sop_uids):
        conn.execute(delete(instances).where(instances.c.sop_instance_uid.in_(chunk)))
    conn.execute(
        delete(series).where(
            series.c.study_uid == study_uid,
            ~exists().where(instances.c.series_uid == series.c.series_uid),
        )
    )
    if (
        whole_study
        and not conn.execute(select(exists().where(instances.c.study_uid == study_uid))).scalar()
    ):
        for table in reversed(metadata.sorted_tables):
            if table in (studies, series, instances):
                continue
            for fk in table.foreign_keys:
                if fk.column is studies.c.study_uid:
                    conn.execute(delete(table).where(fk.parent == study_uid))
        conn.execute(delete(studies).where(studies.c.study_uid == study_uid))
        return
    count = select(func.count()).where(instances.c.study_uid == study_uid).scalar_subquery()
    conn.execute(
        update(studies).where(studies.c.study_uid == study_uid).values(num_instances=count)
    )


class Deleter:
    """Deletes instances from the index and the store, journalled against crashes."""

    def __init__(self, store: InstanceStore, index: Index, fsync: bool = True) -> None:
        self.store = store
        self.index = index
        self.fsync = fsync
        self.dir = store.data_dir / "retention"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()

    @contextmanager
    def locked(self, blocking: bool = True) -> Iterator[bool]:
        """The node-wide deletion lock (a ``flock`` on the data dir): one deleter at a time
        across processes, so a journal found while holding it belongs to a dead one."""
        if not self._thread_lock.acquire(blocking=blocking):
            yield False
            return
        try:
            with (self.dir / ".lock").open("a") as f:
                flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
                try:
                    fcntl.flock(f.fileno(), flags)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    # -- journal ---------------------------------------------------------------------

    def _write_journal(self, entry: dict[str, Any]) -> Path:
        path = self.dir / f"{JOURNAL_PREFIX}{uuid.uuid4().hex}.json"
        tmp = path.with_suffix(".part")
        with tmp.open("w") as f:
            json.dump(entry, f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(self.dir)
        return path

    def _carry_out(self, journal: Path, entry: dict[str, Any]) -> Deletion:
        """Index first (one transaction), files after, journal last: every step may be
        repeated, so a crash anywhere is finished by :meth:`recover`."""
        study_uid: str = entry["study_uid"]
        rows: list[list[Any]] = entry["instances"]
        with self.index.transaction() as conn:
            _forget(conn, study_uid, [r[0] for r in rows], bool(entry.get("whole_study")))
        paths = [r[1] for r in rows]
        with self.index.engine.connect() as conn:
            # a sender's retry may have stored an instance again since: its file stays
            back: set[str] = set()
            for chunk in _chunks(paths):
                found = conn.execute(select(instances.c.path).where(instances.c.path.in_(chunk)))
                back |= set(found.scalars())
        reclaimed = 0
        for relative in paths:
            if relative in back:
                continue
            try:
                path = self.store.path_of(relative)
                reclaimed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("retention: file not removed", extra={"errno": exc.errno})
                continue
            self._remove_empty_dirs(path.parent)
        journal.unlink(missing_ok=True)
        return Deletion(study_uid, len(rows), reclaimed)

    def _remove_empty_dirs(self, directory: Path) -> None:
        for folder in (directory, directory.parent):
            if folder == self.store.studies_dir:
                return
            try:
                folder.rmdir()
            except OSError:
                return

    def recover(self) -> int:
        """Finish the deletions a crash interrupted (journals left behind); returns how many.
        Run at start, before the store's reconciliation, and before each cleanup."""
        with self.locked() as _:
            return self._recover_locked()

    def _recover_locked(self) -> int:
        done = 0
        for journal in sorted(self.dir.glob(f"{JOURNAL_PREFIX}*.json")):
            try:
                entry = json.loads(journal.read_text())
            except (OSError, ValueError):
                logger.error("retention: unreadable journal kept", extra={"path": journal.name})
                continue
            self._carry_out(journal, entry)
            done += 1
        for part in self.dir.glob(f"{JOURNAL_PREFIX}*.part"):
            part.unlink(missing_ok=True)  # never marked: nothing was deleted
        if done:
            logger.warning("retention: interrupted deletions finished", extra={"journals": done})
        return done

    # -- deleting --------------------------------------------------------------------

    def instances_of(
        self, study_uid: str, *, series_uid: str | None = None, originals_only: bool = False
    ) -> list[tuple[str, str, str]]:
        """``(sop_instance_uid, path, sop_class_uid)`` of a study (or of one series); with
        ``originals_only`` every series but the SRs."""
        stmt = (
            select(instances.c.sop_instance_uid, instances.c.path, instances.c.sop_class_uid)
            .select_from(instances.join(series, series.c.series_uid == instances.c.series_uid))
            .where(instances.c.study_uid == study_uid)
        )
        if series_uid is not None:
            stmt = stmt.where(instances.c.series_uid == series_uid)
        if originals_only:
            stmt = stmt.where(func.coalesce(series.c.modality, "") != "SR")
        with self.index.engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def delete_locked(
        self, study_uid: str, rows: list[tuple[str, str, str]], *, whole_study: bool
    ) -> Deletion:
        """Mark (journal), then delete; the caller holds :meth:`locked`."""
        journal = self._write_journal(
            {
                "study_uid": study_uid,
                "whole_study": whole_study,
                "instances": [[sop, path] for sop, path, _ in rows],
                "at": time.time(),
            }
        )
        return self._carry_out(journal, json.loads(journal.read_text()))


class Retention:
    """The retention policy of one node: periodic cleanup, the admin's deletions, and the
    numbers the dashboard and the metrics show."""

    def __init__(
        self,
        settings: Settings,
        index: Index,
        store: InstanceStore,
        audit: AuditTrail,
        registry: CollectorRegistry,
        facts: RetentionFacts | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.audit = audit
        self.facts = facts or RetentionFacts()
        self.deleter = Deleter(store, index, fsync=settings.fsync)
        self.history = self.deleter.dir / HISTORY
        self.disk_usage: Callable[[], tuple[int, int]] = self._disk_usage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reclaimed = PromCounter(
            "radnode_retention_reclaimed_bytes",
            "Bytes of originals deleted, by reason (age, high_water, admin).",
            ["reason"],
            registry=registry,
        )
        self.deleted = PromCounter(
            "radnode_retention_studies_deleted",
            "Studies whose originals (or, by an admin, the whole study or a series) were "
            "deleted, by reason.",
            ["reason"],
            registry=registry,
        )
        self.kept = Gauge(
            "radnode_retention_studies_kept",
            "Studies with originals the last cleanup kept, by reason (undelivered, "
            "labelled, recent).",
            ["reason"],
            registry=registry,
        )
        self.used = Gauge(
            "radnode_retention_disk_used_ratio",
            "Share of the data dir's filesystem in use after the last cleanup.",
            registry=registry,
        )

    # -- numbers ---------------------------------------------------------------------

    def _disk_usage(self) -> tuple[int, int]:
        usage = shutil.disk_usage(self.deleter.store.data_dir)
        return usage.used, usage.total

    def used_ratio(self) -> float:
        used, total = self.disk_usage()
        return used / total if total else 0.0

    def pressed(self) -> bool:
        """Above the high-water mark, or within twice ``min_free_bytes`` of the point where
        the store refuses: time for an early cleanup."""
        used, total = self.disk_usage()
        floor = 2 * self.settings.min_free_bytes
        return bool(total) and (
            used / total >= self.settings.retention_high_water or total - used < floor
        )

    def relieved(self) -> bool:
        used, total = self.disk_usage()
        floor = 2 * self.settings.min_free_bytes
        return (not total or used / total <= self.settings.retention_low_water) and (
            total - used >= floor
        )

    def _originals(self) -> dict[str, float]:
        """Studies that still hold originals, with when their last instance arrived."""
        stmt = (
            select(instances.c.study_uid, studies.c.last_received_at)
            .select_from(
                instances.join(series, series.c.series_uid == instances.c.series_uid).join(
                    studies, studies.c.study_uid == instances.c.study_uid
                )
            )
            .where(func.coalesce(series.c.modality, "") != "SR")
            .group_by(instances.c.study_uid, studies.c.last_received_at)
        )
        with self.index.engine.connect() as conn:
            return {r[0]: float(r[1]) for r in conn.execute(stmt)}

    def _record(self, deletion: Deletion, reason: str) -> None:
        self.reclaimed.labels(reason=reason).inc(deletion.bytes)
        self.deleted.labels(reason=reason).inc()
        line = json.dumps(
            {
                "at": time.time(),
                "study_uid": deletion.study_uid,
                "instances": deletion.instances,
                "bytes": deletion.bytes,
                "reason": reason,
            }
        )
        try:
            with self.history.open("a") as f:
                f.write(line + "\n")
        except OSError as exc:
            logger.warning("retention: history not written", extra={"errno": exc.errno})

    def summary(self, since_s: float = 30 * DAY_S) -> dict[str, Any]:
        """For the dashboard: bytes reclaimed and studies deleted per UTC day (by reason)
        over ``since_s``, the studies kept now (by reason), the disk in use and the policy."""
        cutoff = time.time() - since_s
        days: dict[str, dict[str, int]] = {}
        totals: Counter[str] = Counter()
        try:
            lines = self.history.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item["at"] < cutoff:
                continue
            day = time.strftime("%Y-%m-%d", time.gmtime(item["at"]))
            slot = days.setdefault(day, {"bytes": 0, "studies": 0})
            slot["bytes"] += item["bytes"]
            slot["studies"] += 1
            totals[f"bytes_{item['reason']}"] += item["bytes"]
            totals[f"studies_{item['reason']}"] += 1
        kept, _ = self.classify(time.time())
        used, total = self.disk_usage()
        s = self.settings
        return {
            "enabled": s.retention_enabled,
            "policy": {
                "retention_days": s.retention_days,
                "retention_labelled_days": s.retention_labelled_days,
                "high_water": s.retention_high_water,
                "low_water": s.retention_low_water,
            },
            "disk": {"used_bytes": used, "total_bytes": total},
            "reclaimed_bytes": sum(d["bytes"] for d in days.values()),
            "studies_deleted": sum(d["studies"] for d in days.values()),
            "by_reason": dict(totals),
            "per_day": [{"day": d, **v} for d, v in sorted(days.items())],
            "studies_kept": {reason: kept[reason] for reason in KEPT_REASONS},
        }

    # -- the policy ------------------------------------------------------------------

    def classify(self, now: float) -> tuple[Counter[str], tuple[list[str], list[str]]]:
        """Kept studies by reason, and the deletable ones: due by age, and delivered but
        recent (deleted only above the high-water mark), each oldest delivery first."""
        s = self.settings
        delivered = self.facts.delivered()
        held = self.facts.held()
        kept: Counter[str] = Counter()
        due: list[tuple[float, str]] = []
        early: list[tuple[float, str]] = []
        for study_uid, last_received in self._originals().items():
            at = delivered.get(study_uid)
            # An instance that arrived after the delivery is a new version on its way to
            # analysis (its SR is not queued yet): the study waits for that result.
            if at is None or last_received > at:
                kept["undelivered"] += 1
                continue
            age = now - at
            if study_uid in held and (
                s.retention_labelled_days is None or age < s.retention_labelled_days * DAY_S
            ):
                kept["labelled"] += 1
                continue
            (due if age >= s.retention_days * DAY_S else early).append((at, study_uid))
        kept["recent"] = len(early)
        return kept, ([u for _, u in sorted(due)], [u for _, u in sorted(early)])

    def run_once(self, now: float | None = None) -> CleanupReport:
        """One cleanup: finish interrupted deletions, delete what is due by age, then,
        above the high-water mark, delivered studies oldest first down to the low-water
        mark. Skipped when another process is cleaning up."""
        now = time.time() if now is None else now
        report = CleanupReport(used_before=self.used_ratio())
        with self.deleter.locked(blocking=False) as got:
            if not got:
                report.skipped = True
                return report
            self.deleter._recover_locked()
            report.kept, (due, early) = self.classify(now)
            for study_uid in due:
                self._delete_originals(study_uid, "age", report)
            if self.pressed():
                for study_uid in early:
                    if self.relieved():
                        break
                    self._delete_originals(study_uid, "high_water", report)
                    report.kept["recent"] -= 1
        report.used_after = self.used_ratio()
        for reason in KEPT_REASONS:
            self.kept.labels(reason=reason).set(report.kept[reason])
        self.used.set(report.used_after)
        if report.deleted:
            logger.info(
                "retention cleanup",
                extra={
                    "studies": sum(report.deleted.values()),
                    "reclaimed_bytes": report.reclaimed_bytes,
                    "used_after": round(report.used_after, 3),
                },
            )
        return report

    def _delete_originals(self, study_uid: str, reason: str, report: CleanupReport) -> None:
        rows = self.deleter.instances_of(study_uid, originals_only=True)
        if not rows:
            return
        patient = self._patient(study_uid)
        deletion = self.deleter.delete_locked(study_uid, rows, whole_study=False)
        self._record(deletion, reason)
        report.deleted[reason] += 1
        report.reclaimed_bytes += deletion.bytes
        self.audit.instances_deleted(
            StudyRef(study_uid, Counter(cls for _, _, cls in rows)),
            user=self.audit.process.user_id,
            address=None,
            whole_study=False,
            patient=patient,
            reason=f"retention policy ({reason}): originals deleted, SRs kept",
        )

    def _patient(self, study_uid: str) -> tuple[str, str] | None:
        row = self.index.get_study(study_uid)
        if row is None:
            return None
        return row["patient_id"] or "", row["patient_name"] or ""

    def delete(
        self,
        study_uid: str,
        *,
        series_uid: str | None = None,
        user: str,
        address: str | None,
    ) -> Deletion | None:
        """An admin's deletion of a study (everything of it, its index rows included) or
        of one series; None when there is nothing to delete. Audited."""
        with self.deleter.locked() as _:
            self.deleter._recover_locked()
            rows = self.deleter.instances_of(study_uid, series_uid=series_uid)
            if not rows and (series_uid is not None or self.index.get_study(study_uid) is None):
                return None
            patient = self._patient(study_uid)
            deletion = self.deleter.delete_locked(study_uid, rows, whole_study=series_uid is None)
        self._record(deletion, "admin")
        self.audit.instances_deleted(
            StudyRef(study_uid, Counter(cls for _, _, cls in rows)),
            user=user,
            address=address,
            whole_study=series_uid is None,
            patient=patient,
            reason="deleted by an admin" + (f": series {series_uid}" if series_uid else ""),
        )
        return deletion

    # -- the periodic thread ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="radnode-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        """A cleanup every ``retention_check_s``, and at once when the disk is pressed
        (checked every few seconds: a statvfs call), so ingest never has to refuse."""
        last = 0.0
        fruitless = False  # the last cleanup found nothing to delete
        while not self._stop.is_set():
            since = time.monotonic() - last
            due = since >= self.settings.retention_check_s
            if due or (self.pressed() and (not fruitless or since >= PRESSED_RETRY_S)):
                last = time.monotonic()
                try:
                    fruitless = not self.run_once().deleted
                except OSError as exc:
                    logger.error(
                        "retention cleanup failed", extra={"errno": exc.errno or errno.EIO}
                    )
                except Exception:  # noqa: BLE001 - the loop outlives one bad cleanup
                    logger.exception("retention cleanup failed")
            self._stop.wait(min(self.settings.retention_check_s, PRESSURE_POLL_S))
