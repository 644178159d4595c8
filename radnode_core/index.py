"""The index: what is in the store, by patient/study/series/instance, the job queue and results.

SQLAlchemy Core over SQLite (WAL) or PostgreSQL. The instance files are the
system of record: a file is fsynced (with its directory) before its row is
committed, and the C-STORE success goes out after the commit. SQLite runs
with ``synchronous=NORMAL``: a commit survives a process crash (kill -9); after
a power loss the last commits may be lost, and the start-up reconciliation
(:meth:`radnode_core.store.InstanceStore.reconcile`, run after any unclean stop)
indexes every durable file the index lacks, so no acknowledged instance is
lost either way. PostgreSQL commits are durable on their own.
Patient-level attributes live here for the query services; they never go to
ordinary logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.values import convert_value
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy import (
    Index as SqlIndex,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from radnode_core import schema
from radnode_core.uids import check_uid

logger = logging.getLogger(__name__)

# The tables of the core and, declared by each feature on it, the features' tables. The
# migrations in radnode_core/migrations make the schema; this describes it to queries.
metadata = MetaData()

UID = String(64)

studies = Table(
    "studies",
    metadata,
    Column("study_uid", UID, primary_key=True),
    Column("patient_id", String(64)),
    Column("patient_name", String(324)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession_number", String(16)),
    Column("study_id", String(16)),
    Column("study_description", String(64)),
    Column("referring_physician_name", String(324)),
    Column("num_instances", Integer, nullable=False, default=0),
    # Every stored (non-duplicate) instance bumps received_seq; a job is due while
    # received_seq > queued_seq (see radnode_core.jobs).
    Column("received_seq", Integer, nullable=False, default=0),
    Column("queued_seq", Integer, nullable=False, default=0),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
)
SqlIndex("ix_studies_pending", studies.c.last_received_at)
SqlIndex("ix_studies_patient_id", studies.c.patient_id)
SqlIndex("ix_studies_study_date", studies.c.study_date)

series = Table(
    "series",
    metadata,
    Column("series_uid", UID, primary_key=True),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part_examined", String(16)),
    Column("series_date", String(8)),
    Column("series_time", String(16)),
    Column("performed_procedure_step_start_date", String(8)),
    Column("performed_procedure_step_start_time", String(16)),
    # RequestAttributeSequence > ScheduledProcedureStepID / RequestedProcedureID of the
    # first item (PS3.18 Table 10.6.1-5 requires matching them at series level).
    Column("scheduled_procedure_step_id", String(16)),
    Column("requested_procedure_id", String(16)),
)
SqlIndex("ix_series_study", series.c.study_uid)

instances = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", UID, primary_key=True),
    Column("series_uid", UID, ForeignKey("series.series_uid"), nullable=False),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("instance_number", Integer),
    Column("path", String(512), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("calling_aet", String(16)),
    Column("received_at", Float, nullable=False),
    Column("duplicates", Integer, nullable=False, default=0),
    # Returned by QIDO-RS at instance level (PS3.18 Table 10.6.3-5) without a file read.
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
)
SqlIndex("ix_instances_series", instances.c.series_uid)
SqlIndex("ix_instances_study", instances.c.study_uid)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # queued | running | done | failed
    Column("reason", String(32), nullable=False),  # released | quiet | recovered | manual | stow
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("available_at", Float, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", Float),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    UniqueConstraint("study_uid", "version", name="uq_jobs_study_version"),
)
SqlIndex("ix_jobs_state_available", jobs.c.state, jobs.c.available_at)


_STUDY_ATTRIBUTES = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
)
_SERIES_ATTRIBUTES = (
    "modality",
    "series_number",
    "series_description",
    "body_part_examined",
    "series_date",
    "series_time",
    "performed_procedure_step_start_date",
    "performed_procedure_step_start_time",
    "scheduled_procedure_step_id",
    "requested_procedure_id",
)
_IMAGE_ATTRIBUTES = ("rows", "columns", "bits_allocated", "number_of_frames")


class InstanceConflict(Exception):
    """The SOP Instance UID is already indexed under another study or series: one UID names
    one instance (PS3.5 9.1), so the second copy is refused, not merged."""

    def __init__(self, sop_instance_uid: str) -> None:
        super().__init__(f"SOP Instance UID {sop_instance_uid} is stored in another study/series")
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one stored instance (from the validated dataset)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str  # relative to the data dir
    size: int
    received_at: float
    calling_aet: str | None = None
    instance_number: int | None = None
    study: dict[str, Any] | None = None  # patient/study-level columns of `studies`
    series: dict[str, Any] | None = None  # series-level columns of `series`
    image: dict[str, Any] | None = None  # rows, columns, bits_allocated, number_of_frames
    # False for objects the node derives itself (its SRs): stored and indexed, but they
    # do not make the study due for analysis again.
    analyze: bool = True


def dataset_value(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)`` for an attribute the index or the ingest checks read, but a
    value still as read from the file is converted with pydicom's own value converter
    (:func:`pydicom.values.convert_value`) and left raw in the dataset: a third of the
    cost of pydicom's element conversion, which runs its hooks and validation and builds
    a DataElement. Any element that is not plainly of the dictionary VR goes through
    ``ds.get``."""
    tag, vr = _INDEXED_TAGS[keyword]
    elem = ds._dict.get(tag)
    if elem is None:
        return None
    if type(elem) is RawDataElement and elem.VR in (None, vr) and elem.value is not None:
        try:
            encodings = ds._character_set if vr in _CHARACTER_SET_VRS else None
            return convert_value(vr, elem, encodings)
        except Exception:  # noqa: BLE001 - pydicom's own conversion decides, below
            pass
    return ds.get(keyword)


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = dataset_value(ds, keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


INT_MIN, INT_MAX = -(2**31), 2**31 - 1
"""The range of an IS value (PS3.5 6.2) and of the index's integer columns."""


def _int(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute for the index; None when absent, unreadable or out of range.

    A value outside the IS range (a 20-digit Instance Number) is kept in the stored file
    as received; the index, whose columns are 32-bit, records it as unknown.
    """
    try:
        value = dataset_value(ds, keyword)
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    if number is None or not INT_MIN <= number <= INT_MAX:
        return None
    return number


def _request_attributes(ds: Dataset) -> dict[str, str | None]:
    """The first Request Attributes Sequence item's step and procedure IDs (or None)."""
    if "RequestAttributesSequence" not in ds:
        return {"scheduled_procedure_step_id": None, "requested_procedure_id": None}
    try:
        item = ds.RequestAttributesSequence[0]
    except (IndexError, TypeError):
        return {"scheduled_procedure_step_id": None, "requested_procedure_id": None}
    return {
        "scheduled_procedure_step_id": _text(item, "ScheduledProcedureStepID", 16),
        "requested_procedure_id": _text(item, "RequestedProcedureID", 16),
    }


_INDEXED_KEYWORDS = (
    "SOPInstanceUID SOPClassUID StudyInstanceUID SeriesInstanceUID InstanceNumber PatientID "
    "PatientName PatientBirthDate PatientSex StudyDate StudyTime AccessionNumber StudyID "
    "StudyDescription ReferringPhysicianName Modality SeriesNumber SeriesDescription "
    "BodyPartExamined SeriesDate SeriesTime PerformedProcedureStepStartDate "
    "PerformedProcedureStepStartTime ScheduledProcedureStepID RequestedProcedureID Rows "
    "Columns BitsAllocated NumberOfFrames"
).split()
_INDEXED_TAGS: dict[str, tuple[BaseTag, str]] = {
    keyword: (BaseTag(tag), dictionary_VR(tag))
    for keyword in (*_INDEXED_KEYWORDS, "SamplesPerPixel")
    if (tag := tag_for_keyword(keyword)) is not None
}
"""Tag and dictionary VR of every attribute the index reads, and of Samples per Pixel
(the ingest's Pixel Data length check reads it with the image's size)."""
_CHARACTER_SET_VRS = frozenset({"PN", "SH", "LO", "ST", "LT", "UC", "UT"})
"""VRs whose values the Specific Character Set applies to (PS3.5 6.1.2.3)."""


def record_fields_from_dataset(
    ds: Dataset, transfer_syntax_uid: str, calling_aet: str | None
) -> dict[str, Any]:
    """The index fields of an instance, from its dataset (UIDs validated, PS3.5 9.1).

    Raises :class:`radnode_core.uids.InvalidUID` when a UID the store needs is missing
    or malformed.
    """
    return {
        "sop_instance_uid": check_uid(dataset_value(ds, "SOPInstanceUID"), "SOP Instance UID"),
        "sop_class_uid": check_uid(dataset_value(ds, "SOPClassUID"), "SOP Class UID"),
        "study_uid": check_uid(dataset_value(ds, "StudyInstanceUID"), "Study Instance UID"),
        "series_uid": check_uid(dataset_value(ds, "SeriesInstanceUID"), "Series Instance UID"),
        "transfer_syntax_uid": str(transfer_syntax_uid),
        "calling_aet": calling_aet,
        "instance_number": _int(ds, "InstanceNumber"),
        "study": {
            "patient_id": _text(ds, "PatientID", 64),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _text(ds, "PatientBirthDate", 8),
            "patient_sex": _text(ds, "PatientSex", 16),
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "accession_number": _text(ds, "AccessionNumber", 16),
            "study_id": _text(ds, "StudyID", 16),
            "study_description": _text(ds, "StudyDescription", 64),
            "referring_physician_name": _text(ds, "ReferringPhysicianName", 324),
        },
        "series": {
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", 64),
            "body_part_examined": _text(ds, "BodyPartExamined", 16),
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
            "performed_procedure_step_start_date": _text(ds, "PerformedProcedureStepStartDate", 8),
            "performed_procedure_step_start_time": _text(ds, "PerformedProcedureStepStartTime", 16),
            **_request_attributes(ds),
        },
        "image": {
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "bits_allocated": _int(ds, "BitsAllocated"),
            "number_of_frames": _int(ds, "NumberOfFrames"),
        },
    }


def _enable_wal(database: str) -> None:
    """Put a SQLite file in WAL mode (it persists in the file).

    SQLite switches the journal mode without waiting on its busy handler, so connections
    opened together on a new file fail with "database is locked". The switch is made once
    per engine, before the pool opens connections, under the lock file the schema
    upgrade uses.
    """
    with (
        schema.file_lock(schema.sqlite_lock_path(database)),
        closing(sqlite3.connect(database, timeout=30)) as conn,
    ):
        conn.execute("PRAGMA journal_mode=WAL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: two writers never deadlock upgrading read locks.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL, `synchronous=NORMAL` (the files are the system of
    record) and immediate write transactions."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        if engine.url.database not in (None, "", ":memory:"):
            _enable_wal(engine.url.database)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is disabled so BEGIN IMMEDIATE is ours.
        event.listen(
            engine,
            "connect",
            lambda dbapi_conn, _rec: setattr(dbapi_conn, "isolation_level", None),
        )
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class _KnownInstance(Exception):
    """Rolls back a new instance's transaction that found its SOP Instance UID indexed."""


@dataclass(frozen=True)
class _Prepared:
    """A statement compiled once for the engine's dialect and executed on a DBAPI cursor.

    Indexing a received instance is four statements in one transaction, on every C-STORE;
    SQLAlchemy's work around each execute (execution context, result, events) took two
    thirds of that commit's time. The SQL is still SQLAlchemy's, for every dialect.
    """

    sql: str
    order: tuple[str, ...] | None  # parameter names for a positional paramstyle, else None
    fixed: dict[str, Any]  # values the statement binds itself (the 1 of ``n + 1``)

    @classmethod
    def compile(cls, statement: Any, dialect: Any, keys: Iterable[str] | None = None) -> _Prepared:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(keys) if keys is not None else None
        )
        fixed = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if not bind.required and bind.value is not None
        }
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        return cls(compiled.string, order, fixed)

    def execute(self, cursor: Any, params: dict[str, Any]) -> None:
        values = {**self.fixed, **params} if self.fixed else params
        if self.order is None:
            cursor.execute(self.sql, values)
        else:
            cursor.execute(self.sql, [values[name] for name in self.order])


_SAMPLE_RECORD = InstanceRecord(
    sop_instance_uid="",
    sop_class_uid="",
    series_uid="",
    study_uid="",
    transfer_syntax_uid="",
    path="",
    size=0,
    received_at=0.0,
)
"""Any record: what :meth:`Index._rows` makes of it has every row's columns."""


class Index:
    """Database access for the store, the completion tracker and the job queue."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # Every role upgrades the schema at start (radnode_core.schema); at head, one query.
        try:
            schema.ensure_current(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._prepare_statements()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _dbapi_transaction(self) -> Iterator[Any]:
        """A cursor in one transaction on a pooled DBAPI connection (for :class:`_Prepared`);
        SQLite's begins IMMEDIATE, as :meth:`transaction`'s do."""
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                if self.is_sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:  # noqa: BLE001 - a lost connection: dropped, the error stands
                    conn.invalidate()
                raise
            finally:
                cursor.close()
        finally:
            conn.close()

    def _insert_ignore(self, table: Table, key: str) -> Any:
        """INSERT ... ON CONFLICT (key) DO NOTHING, built once; values come at execute time."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing(index_elements=[key])

    def _prepare_statements(self) -> None:
        # Built once so SQLAlchemy's compiled cache is hit on every C-STORE.
        self._insert_study = self._insert_ignore(studies, "study_uid")
        self._insert_series = self._insert_ignore(series, "series_uid")
        # RETURNING tells a new row from a conflict on every dialect: with psycopg the
        # cursor's rowcount of a Core INSERT is -1, which made a resend look new.
        self._insert_instance = self._insert_ignore(instances, "sop_instance_uid").returning(
            instances.c.sop_instance_uid
        )
        self._bump_study = (
            update(studies)
            .where(studies.c.study_uid == bindparam("b_study_uid"))
            .values(
                num_instances=studies.c.num_instances + 1,
                received_seq=studies.c.received_seq + 1,
                last_received_at=bindparam("b_received_at"),
            )
        )
        self._count_derived = (
            update(studies)
            .where(studies.c.study_uid == bindparam("b_study_uid"))
            .values(num_instances=studies.c.num_instances + 1)
        )
        self._count_duplicate = (
            update(instances)
            .where(instances.c.sop_instance_uid == bindparam("b_sop_instance_uid"))
            .values(duplicates=instances.c.duplicates + 1)
        )
        self._find_instance = select(instances).where(
            instances.c.sop_instance_uid == bindparam("b_sop_instance_uid")
        )
        dialect = self.engine.dialect
        # The rows' columns are those :meth:`_rows` makes, the same for every instance.
        self._index_new = tuple(
            _Prepared.compile(statement, dialect, row)
            for statement, row in zip(
                (self._insert_study, self._insert_series, self._insert_instance),
                self._rows(_SAMPLE_RECORD),
                strict=True,
            )
        )
        self._count_new = {
            True: _Prepared.compile(self._bump_study, dialect),
            False: _Prepared.compile(self._count_derived, dialect),
        }

    # -- instances -----------------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                self._find_instance, {"b_sop_instance_uid": sop_instance_uid}
            ).first()
        return dict(row._mapping) if row else None

    def add_instance(self, rec: InstanceRecord) -> bool:
        """Index a stored instance in one transaction. Returns False if it was a duplicate.

        A duplicate (same SOP Instance UID already indexed in the same series) only bumps
        its counter. The same SOP Instance UID in another study or series raises
        :class:`InstanceConflict`, and the transaction (with any study or series row it
        made for the newcomer) is rolled back.
        """
        rows = self._rows(rec)
        try:
            with self._dbapi_transaction() as cursor:
                for statement, row in zip(self._index_new, rows, strict=True):
                    statement.execute(cursor, row)
                if cursor.fetchone() is None:  # no RETURNING row: the UID is indexed
                    raise _KnownInstance
                self._count_new[rec.analyze].execute(
                    cursor, {"b_study_uid": rec.study_uid, "b_received_at": rec.received_at}
                )
                return True
        except _KnownInstance:
            return self._add_known(rec, rows)

    def _add_known(self, rec: InstanceRecord, rows: tuple[dict[str, Any], ...]) -> bool:
        """:meth:`add_instance` for a SOP Instance UID the index already has (the new
        instance's transaction found it and was rolled back): a duplicate, or a conflict."""
        with self.transaction() as conn:
            for statement, row in zip(
                (self._insert_study, self._insert_series, self._insert_instance), rows, strict=True
            ):
                result = conn.execute(statement, row)
            if result.first() is not None:  # removed in between: new after all
                conn.execute(
                    self._bump_study if rec.analyze else self._count_derived,
                    {"b_study_uid": rec.study_uid, "b_received_at": rec.received_at},
                )
                return True
            indexed = conn.execute(
                self._find_instance, {"b_sop_instance_uid": rec.sop_instance_uid}
            ).first()
            if indexed is not None and (indexed.study_uid, indexed.series_uid) != (
                rec.study_uid,
                rec.series_uid,
            ):
                raise InstanceConflict(rec.sop_instance_uid)
            conn.execute(self._count_duplicate, {"b_sop_instance_uid": rec.sop_instance_uid})
            return False

    @staticmethod
    def _rows(rec: InstanceRecord) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The study, series and instance rows of ``rec``."""
        study_row: dict[str, Any] = dict.fromkeys(_STUDY_ATTRIBUTES)
        study_row.update(rec.study or {})
        study_row.update(
            study_uid=rec.study_uid,
            num_instances=0,
            received_seq=0,
            queued_seq=0,
            first_received_at=rec.received_at,
            last_received_at=rec.received_at,
        )
        series_row: dict[str, Any] = dict.fromkeys(_SERIES_ATTRIBUTES)
        series_row.update(rec.series or {})
        series_row.update(series_uid=rec.series_uid, study_uid=rec.study_uid)
        instance_row = {
            "sop_instance_uid": rec.sop_instance_uid,
            "series_uid": rec.series_uid,
            "study_uid": rec.study_uid,
            "sop_class_uid": rec.sop_class_uid,
            "transfer_syntax_uid": rec.transfer_syntax_uid,
            "instance_number": rec.instance_number,
            "path": rec.path,
            "size": rec.size,
            "calling_aet": rec.calling_aet,
            "received_at": rec.received_at,
            "duplicates": 0,
            **dict.fromkeys(_IMAGE_ATTRIBUTES),
            **(rec.image or {}),
        }
        return study_row, series_row, instance_row

    def replace_instance(self, rec: InstanceRecord) -> None:
        """Record that a stored instance's bytes were replaced (duplicate policy replace)."""
        with self.transaction() as conn:
            conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == rec.sop_instance_uid)
                .values(
                    transfer_syntax_uid=rec.transfer_syntax_uid,
                    size=rec.size,
                    received_at=rec.received_at,
                    calling_aet=rec.calling_aet,
                    duplicates=instances.c.duplicates + 1,
                )
            )
            if rec.analyze:
                conn.execute(
                    update(studies)
                    .where(studies.c.study_uid == rec.study_uid)
                    .values(
                        received_seq=studies.c.received_seq + 1,
                        last_received_at=rec.received_at,
                    )
                )

    def count_duplicates(self, sop_instance_uid: str) -> None:
        with self.transaction() as conn:
            conn.execute(self._count_duplicate, {"b_sop_instance_uid": sop_instance_uid})

    def instance_paths(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(instances.c.path)).scalars())

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances)
                .where(instances.c.study_uid == study_uid)
                .order_by(instances.c.series_uid, instances.c.instance_number)
            )
            return [dict(r._mapping) for r in rows]

    def get_study(self, study_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).first()
        return dict(row._mapping) if row else None

    def counts(self, approximate: bool = False) -> dict[str, int]:
        """Studies, series and instances in the index. ``approximate`` on PostgreSQL: the
        planner's row estimates (``pg_class.reltuples``, kept by autovacuum) instead of
        counting every row, for probes that must answer in milliseconds at any size."""
        if approximate and not self.is_sqlite:
            with self.engine.connect() as conn:
                estimates: dict[str, int] = dict(
                    conn.execute(
                        text(
                            "SELECT relname, reltuples::bigint FROM pg_class "
                            "WHERE relname IN ('studies', 'series', 'instances') "
                            "AND relkind = 'r' AND relnamespace = 'public'::regnamespace"
                        )
                    ).all()
                )
            if all(estimates.get(name, -1) >= 0 for name in ("studies", "series", "instances")):
                return {name: int(estimates[name]) for name in ("studies", "series", "instances")}
        with self.engine.connect() as conn:
            return {
                "studies": conn.execute(select(func.count()).select_from(studies)).scalar_one(),
                "series": conn.execute(select(func.count()).select_from(series)).scalar_one(),
                "instances": conn.execute(select(func.count()).select_from(instances)).scalar_one(),
            }


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
