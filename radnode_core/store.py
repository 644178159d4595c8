"""The instance store: DICOM Part 10 files under the data dir, written durably.

Layout: ``<data_dir>/studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.
Every write goes to ``<data_dir>/tmp/`` first, is fsynced, renamed into place
and the directory fsynced; only then is it indexed, and only after the index
commit does a caller acknowledge the sender. A crash therefore leaves at
worst a temp file (removed at the next start) or a complete file the index
lacks (indexed at the next start by :meth:`InstanceStore.reconcile`).

UIDs come from the network and are untrusted: :func:`check_uid` admits only
what PS3.5 9.1 allows (digits and dots, at most 64 characters), so no UID can
name a path outside the data dir.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from radnode_core import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from radnode_core.index import (
    Index,
    InstanceConflict,
    InstanceRecord,
    record_fields_from_dataset,
)
from radnode_core.settings import DuplicatePolicy
from radnode_core.uids import InvalidUID

logger = logging.getLogger(__name__)

CLEAN_SHUTDOWN_MARKER = ".clean-shutdown"
ZERO_PREAMBLE = b"\x00" * 128
"""Every Part 10 file radnode writes or sends starts with this (PS3.10 7.1): a preamble
from the wire is never kept, so no file can double as a PE or ELF executable."""


class StoreFull(OSError):
    """The store cannot take the instance (free space below the configured minimum)."""


@dataclass(frozen=True)
class StoreResult:
    record: InstanceRecord
    duplicate: bool


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_DURABLE_FOLDERS = 10_000
"""Series folders a store remembers as durable (forgotten all at once beyond that)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian with a 2-byte length (PS3.5 7.1.2)."""
    return _SHORT_ELEMENT.pack(0x0002, element, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    """A UI value: ASCII, at most 64 characters, NUL-padded to even length (PS3.5 6.2, 9.1)."""
    value = uid.encode("ascii")
    if not value or len(value) > 64:
        raise ValueError("UID empty or longer than 64 characters")
    return value + b"\x00" if len(value) % 2 else value


def _text_value(text: str, limit: int) -> bytes:
    """An SH or AE value: ASCII without backslash or control characters, at most ``limit``
    characters, space-padded to even length (PS3.5 6.2)."""
    value = text.encode("ascii")
    if len(value) > limit or any(c < 0x20 or c == 0x5C for c in value):
        raise ValueError("text value not allowed in the File Meta Information")
    return value + b" " if len(value) % 2 else value


_SHORT_ELEMENT = struct.Struct("<HH2sH")
_GROUP_LENGTH = struct.Struct("<HH2sHI")
_META_VERSION = _GROUP_LENGTH.pack(0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_META_IMPLEMENTATION = _meta_element(0x0012, b"UI", _uid_value(IMPLEMENTATION_CLASS_UID))
_META_IMPLEMENTATION += _meta_element(0x0013, b"SH", _text_value(IMPLEMENTATION_VERSION_NAME, 16))


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str | None
) -> bytes:
    """Preamble (zeroed, PS3.10 7.1), 'DICM' and the File Meta Information group: version,
    media storage SOP class and instance, transfer syntax, implementation class and version
    name, and the source AE title if given (PS3.10 7.1), explicit VR little endian.

    Encoded directly rather than through a pydicom Dataset: this runs twice per C-STORE,
    and pydicom's element validation and writer cost about 0.5 ms a call. Raises
    ValueError for a value the group cannot hold (non-ASCII, a UID over 64 characters)."""
    body = b"".join(
        (
            _META_VERSION,
            _meta_element(0x0002, b"UI", _uid_value(sop_class_uid)),
            _meta_element(0x0003, b"UI", _uid_value(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _uid_value(transfer_syntax_uid)),
            _META_IMPLEMENTATION,
            _meta_element(0x0016, b"AE", _text_value(source_aet, 16)) if source_aet else b"",
        )
    )
    return ZERO_PREAMBLE + b"DICM" + _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, len(body)) + body


class InstanceStore:
    """Durable, indexed storage of received instances."""

    def __init__(
        self,
        data_dir: Path,
        index: Index,
        *,
        duplicate_policy: DuplicatePolicy = "keep_first",
        fsync: bool = True,
        min_free_bytes: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._data_dir_str = str(self.data_dir)
        self.index = index
        self.duplicate_policy = duplicate_policy
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.studies_dir = self.data_dir / "studies"
        # Each process writes its temp files in its own folder, so one process's
        # start-up clean-up never removes another's file in flight (shared data dir).
        self.tmp_root = self.data_dir / "tmp"
        self.tmp_dir = self.tmp_root / f"{socket.gethostname()}.{os.getpid()}"
        self.studies_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._free_checked_at = 0.0
        self._durable_folders: set[Path] = set()

    # -- paths -------------------------------------------------------------------

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        return f"studies/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"

    def path_of(self, relative: str) -> Path:
        """The absolute path of a store-relative path; refuses anything that leaves the data dir.

        Lexical (no symlink resolution, no syscalls): the store itself never makes links.
        """
        path = os.path.normpath(os.path.join(self._data_dir_str, relative))
        if not path.startswith(self._data_dir_str + os.sep):
            raise InvalidUID("path escapes the data dir")
        return Path(path)

    # -- writing -----------------------------------------------------------------

    def _check_free_space(self, size: int) -> None:
        if not self.min_free_bytes:
            return
        usage = shutil.disk_usage(self.data_dir)
        if usage.free - size < self.min_free_bytes:
            raise StoreFull(errno.ENOSPC, "free space below the configured minimum")

    def _ensure_dir(self, directory: Path) -> None:
        """Create a directory and its missing parents, each new entry made durable."""
        if directory.is_dir():
            return
        self._ensure_dir(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return  # another thread made it; the first file placed in it syncs its parents
        if self.fsync:
            _fsync_dir(directory.parent)

    def _rename_into(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``, making its folders where the rename finds one
        missing (a new study or series, or a folder another thread's failed store removed,
        :meth:`_discard`): a series folder that is there costs no look before the rename."""
        for attempt in range(4):
            try:
                os.replace(tmp, final)
                return
            except FileNotFoundError:
                if attempt == 3 or not tmp.exists():
                    raise
            try:
                self._ensure_dir(final.parent)
            except FileNotFoundError:
                continue  # another thread's _discard removed the study folder meanwhile

    def _place(self, tmp: Path, final: Path) -> None:
        """Rename a synced temp file to ``final`` and make its name durable: its folder
        synced, and, the first time this store places a file in a series folder, the study
        folder and the studies folder too (another thread or process may have made them
        and not yet synced, or never synced, their parents). If a sync fails, the file is
        removed again: nothing that is refused stays in place."""
        self._rename_into(tmp, final)
        if not self.fsync:
            return
        series = final.parent
        try:
            _fsync_dir(series)
            if series not in self._durable_folders:
                _fsync_dir(series.parent)
                _fsync_dir(self.studies_dir)
                if len(self._durable_folders) >= _DURABLE_FOLDERS:
                    self._durable_folders.clear()
                self._durable_folders.add(series)
        except BaseException:
            self._discard(final)
            raise

    def _discard(self, final: Path) -> None:
        """Remove a file that was not indexed, and its series and study folders if that
        left them empty: a refused instance leaves nothing behind."""
        final.unlink(missing_ok=True)
        for directory in (final.parent, final.parent.parent):
            if directory == self.studies_dir:
                break
            try:
                directory.rmdir()
            except OSError:  # not empty (or gone): another instance lives there
                break

    def _write_atomic(self, final: Path, chunks: list[bytes | memoryview]) -> int:
        tmp = self.tmp_dir / f"{final.stem}.{uuid.uuid4().hex}.part"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except FileNotFoundError:
                # On a shared data dir another host's start-up clean-up removes temp
                # folders idle for a day (remove_temp_files): a quiet receiver makes
                # its own again.
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                views = [memoryview(chunk) for chunk in chunks]
                size = sum(len(v) for v in views)
                while views:  # one writev for meta + dataset; loop on short writes
                    written = os.writev(fd, views)
                    while views and written >= len(views[0]):
                        written -= len(views[0])
                        views.pop(0)
                    if views and written:
                        views[0] = views[0][written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._place(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def _kept_duplicate(
        self, final: Path, record_fields: dict[str, Any]
    ) -> tuple[StoreResult | None, dict[str, Any] | None]:
        """The stored row of this SOP Instance UID, if its file exists, and, under
        ``keep_first``, the result that ends the store there (counted, nothing written).
        A new instance costs no index lookup: its file cannot exist yet."""
        sop_uid = record_fields["sop_instance_uid"]
        existing = self.index.find_instance(sop_uid) if final.exists() else None
        if existing is None or self.duplicate_policy != "keep_first":
            return None, existing
        self.index.count_duplicates(sop_uid)
        rec = InstanceRecord(
            path=existing["path"], size=existing["size"], received_at=time.time(), **record_fields
        )
        return StoreResult(rec, duplicate=True), existing

    def _index(
        self,
        final: Path,
        relative: str,
        size: int,
        record_fields: dict[str, Any],
        existing: dict[str, Any] | None,
    ) -> StoreResult:
        """Index the instance just made durable at ``final``; if that fails, remove the file
        (never acknowledged, so nothing may be left behind)."""
        rec = InstanceRecord(path=relative, size=size, received_at=time.time(), **record_fields)
        if existing is not None:
            self.index.replace_instance(rec)
            return StoreResult(rec, duplicate=True)
        try:
            added = self.index.add_instance(rec)
        except BaseException:
            self._discard(final)
            raise
        return StoreResult(rec, duplicate=not added)

    def _final_path(self, record_fields: dict[str, Any]) -> tuple[str, Path]:
        relative = self.relative_path(
            record_fields["study_uid"],
            record_fields["series_uid"],
            record_fields["sop_instance_uid"],
        )
        return relative, self.path_of(relative)

    def store(
        self,
        dataset_bytes: bytes | memoryview,
        meta: bytes,
        record_fields: dict[str, Any],
    ) -> StoreResult:
        """Write one instance (file meta + the dataset exactly as received) and index it.

        ``record_fields`` are the validated values for :class:`InstanceRecord`
        (UIDs already checked with :func:`check_uid`), without path/size/time.
        Raises OSError (incl. :class:`StoreFull`) when it cannot write, and
        :class:`~radnode_core.index.InstanceConflict` when the SOP Instance UID is stored
        under other study or series UIDs; nothing is then left behind.
        """
        relative, final = self._final_path(record_fields)
        kept, existing = self._kept_duplicate(final, record_fields)
        if kept is not None:
            return kept
        self._check_free_space(len(meta) + len(dataset_bytes))
        size = self._write_atomic(final, [meta, dataset_bytes])
        return self._index(final, relative, size, record_fields, existing)

    def store_file(
        self,
        path: Path,
        offset: int,
        meta: bytes,
        record_fields: dict[str, Any],
        synced: Callable[[], bool] | None = None,
        *,
        written: tuple[bytes, int] | None = None,
    ) -> StoreResult:
        """:meth:`store` for a dataset already in a file of the temp folder, from ``offset``
        on (a spooled C-STORE). If the file starts with ``meta`` it becomes the instance:
        fsynced and renamed into place, the same durability as :meth:`store` with no
        second write; otherwise ``meta`` and the dataset are written to a new file. The
        caller removes ``path`` if it is still there afterwards. ``synced``: waits for an
        fsync of ``path`` begun elsewhere (True once it is done; it raises that fsync's
        error), which then stands for the store's own. ``written``: the file's first
        ``offset`` bytes and its size, where the caller wrote the file itself and knows
        them (a spool): a file that starts with ``meta`` and is synced is then renamed
        without being opened again."""
        relative, final = self._final_path(record_fields)
        kept, existing = self._kept_duplicate(final, record_fields)
        if kept is not None:
            return kept
        if written is not None and written[0] == meta and len(meta) == offset:
            size = written[1] - offset + len(meta)
            self._check_free_space(0)
            if self.fsync and not (synced is not None and synced()):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return self._rename_and_index(path, final, relative, size, record_fields, existing)
        with open(path, "rb") as f:
            head = f.read(offset) if offset == len(meta) else b""
            size = os.fstat(f.fileno()).st_size - offset + len(meta)
            # A renamed spool file takes no more room than it already does.
            self._check_free_space(0 if head == meta else size)
            if head == meta:
                if self.fsync and not (synced is not None and synced()):
                    os.fsync(f.fileno())
            else:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    view = memoryview(mapped)[offset:]
                    try:
                        self._write_atomic(final, [meta, view])
                    finally:
                        view.release()
        if head == meta:
            return self._rename_and_index(path, final, relative, size, record_fields, existing)
        return self._index(final, relative, size, record_fields, existing)

    def _rename_and_index(
        self,
        path: Path,
        final: Path,
        relative: str,
        size: int,
        record_fields: dict[str, Any],
        existing: dict[str, Any] | None,
    ) -> StoreResult:
        """A synced file of the temp folder that is the instance: renamed into place, its
        folder synced, then indexed."""
        self._place(path, final)
        return self._index(final, relative, size, record_fields, existing)

    # -- reading -----------------------------------------------------------------

    def open_dataset(self, relative: str, stop_before_pixels: bool = False) -> Dataset:
        return dcmread(self.path_of(relative), stop_before_pixels=stop_before_pixels)

    # -- lifecycle ---------------------------------------------------------------

    def was_clean_shutdown(self) -> bool:
        return (self.data_dir / CLEAN_SHUTDOWN_MARKER).exists()

    def mark_running(self) -> None:
        (self.data_dir / CLEAN_SHUTDOWN_MARKER).unlink(missing_ok=True)
        if self.fsync:
            _fsync_dir(self.data_dir)

    def mark_clean_shutdown(self) -> None:
        (self.data_dir / CLEAN_SHUTDOWN_MARKER).touch()

    def remove_temp_files(self, stale_after_s: float = 24 * 3600) -> int:
        """Remove temp folders of dead processes: this host's by pid, others' by age."""
        removed = 0
        host = socket.gethostname()
        for entry in os.scandir(self.tmp_root):
            if not entry.is_dir() or entry.path == str(self.tmp_dir):
                continue
            owner_host, _, pid = entry.name.rpartition(".")
            if owner_host == host:
                if pid.isdigit() and _pid_alive(int(pid)):
                    continue
            elif time.time() - entry.stat().st_mtime < stale_after_s:
                continue
            removed += sum(1 for _ in Path(entry.path).iterdir())
            shutil.rmtree(entry.path, ignore_errors=True)
        return removed

    def reconcile(self) -> tuple[int, int]:
        """Index complete files the index lacks (a crash between rename and commit).

        Such files were fully written and fsynced before the rename, but never
        acknowledged; indexing them keeps the store and the index equal (the
        sender's retry is then a duplicate). Files that do not parse are removed.
        Returns (indexed, removed).
        """
        known = self.index.instance_paths()
        indexed = removed = 0
        for root, _dirs, files in os.walk(self.studies_dir):
            for name in files:
                path = Path(root) / name
                relative = path.relative_to(self.data_dir).as_posix()
                if relative in known:
                    continue
                try:
                    ds = dcmread(path, stop_before_pixels=True)
                    fields = record_fields_from_dataset(ds, ds.file_meta.TransferSyntaxUID, None)
                    if (
                        self.relative_path(
                            fields["study_uid"], fields["series_uid"], fields["sop_instance_uid"]
                        )
                        != relative
                    ):
                        raise InvalidUID("file is not where its UIDs say")
                except Exception as exc:  # noqa: BLE001 - any unreadable orphan is removed
                    logger.warning(
                        "removing unreadable orphan file",
                        extra={"path": relative, "error": str(exc)},
                    )
                    path.unlink(missing_ok=True)
                    removed += 1
                    continue
                # An SR is never analysed (the node's own results and the PACS's reports are
                # stored with analyze=False): an orphaned one must not make its study due
                # again, or a crash between an SR's rename and its commit yields a second SR.
                rec = InstanceRecord(
                    path=relative,
                    size=path.stat().st_size,
                    received_at=time.time(),
                    analyze=fields["series"].get("modality") != "SR",
                    **fields,
                )
                try:
                    self.index.add_instance(rec)
                except InstanceConflict:
                    logger.warning(
                        "removing orphan file whose UID is stored elsewhere",
                        extra={"path": relative},
                    )
                    self._discard(path)
                    removed += 1
                    continue
                indexed += 1
        return indexed, removed

    def recover(self, reconcile: bool = True) -> dict[str, int]:
        """Start-up recovery: drop temp files; after an unclean stop, reconcile."""
        stats = {"temp_removed": self.remove_temp_files(), "indexed": 0, "removed": 0}
        if reconcile and not self.was_clean_shutdown():
            stats["indexed"], stats["removed"] = self.reconcile()
        self.mark_running()
        if any(stats.values()):
            logger.warning("store recovered after an unclean shutdown", extra=stats)
        return stats
