"""Decoding and scoring a study while it arrives, so its job has only the tail left.

A :class:`Prefetcher` follows the shared index (the same database the receiving
processes write, so it works in ``radnode serve`` and beside separate ``radnode scp``
processes alike): every ``poll_s`` it reads the studies that are still arriving (stored
instances no job covers yet, the last one received within ``ttl_s``), and decodes each
of their new instances of a SOP class an active model takes onto the grids the active
models need, with the same function a job uses (:func:`ai_node.preprocess.decode_file`).

Every ``score_batch`` files decoded, the models that score every slice (not a sample of
them, which depends on the final count) score the new ones as a job would
(:func:`score_ahead`); their outputs are kept with the files, by model name and version,
so a model activated meanwhile scores the study again in its job.

What it decodes goes into a :class:`DecodedCache`: per study, per stored file, the
frames and header, with the fingerprint of the index row it was decoded from (path,
size, time received). A job uses an entry only when its row still has that fingerprint,
so an instance replaced after it was decoded is decoded again, and a file the index does
not list for the job is never used. The cache is only an optimisation: a job decodes
whatever it lacks, so a restarted worker (empty cache) makes the same result.

Memory is bounded by ``max_bytes`` over every study: a new entry first evicts the
studies touched least recently; when the one study it belongs to fills the budget alone,
it is not cached (a sender that never finishes its study cannot make the cache grow).
A study untouched for ``ttl_s`` is dropped, and a study's entries leave the cache when
its job takes them.

The cache lives in the worker's process: several workers on one index each follow every
arriving study, and the one that claims its job uses what it decoded (``prefetch_max_mb``
0 turns following off, e.g. on all but one of many small workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from ai_node.models import LoadedModel
from ai_node.preprocess import MAX_SLICES, DecodedFile, SliceRef, card_input, decode_file
from radnode_core.index import Index, instances, studies

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.25
"""Seconds between looks while no study is arriving (an idle node's index is read four
times a second, not every ``poll_s``); the first instances of a new study wait at most
this long to be noticed, which the decoding catches up while the rest arrive."""

Fingerprint = tuple[str, int, float]
"""An instance's index row as far as its decoded pixels go: (path, size, received_at)."""

CURSOR_SLACK_S = 2.0
"""How far before the newest instance seen a study's next look at the index starts."""

HEADER_BYTES = 32 * 1024
"""What one cached header is counted as (a pydicom Dataset without its pixels)."""


def fingerprint(row: Mapping[str, Any]) -> Fingerprint:
    """The fingerprint of an ``instances`` row (a replaced instance changes its size or
    time received; its path stays)."""
    return (str(row["path"]), int(row["size"]), float(row["received_at"]))


@dataclass(frozen=True)
class Plan:
    """What to do ahead: decode instances of these SOP classes onto these grid sizes, and
    score them with ``models`` (those that score every slice; each only on the SOP classes
    its card takes)."""

    sop_classes: frozenset[str]
    sizes: tuple[int, ...]
    models: tuple[LoadedModel, ...] = ()


@dataclass
class Entry:
    """One stored file decoded ahead of its job, and the outputs (one row per frame) of
    the models that scored it already, by model key (name and version)."""

    fingerprint: Fingerprint
    decoded: DecodedFile
    nbytes: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def _nbytes(decoded: DecodedFile) -> int:
    frames, _ = decoded
    grids = sum(f.grid.nbytes + sum(g.nbytes for g in f.extra.values()) for f in frames)
    return grids + HEADER_BYTES


@dataclass
class _Study:
    entries: dict[str, Entry] = field(default_factory=dict)
    nbytes: int = 0
    frames: int = 0
    touched: float = 0.0


class DecodedCache:
    """Files decoded ahead of their job, per study, within ``max_bytes`` (module docstring).

    Thread-safe: the prefetcher puts, the job takes. While a study's job runs (between
    :meth:`take` and :meth:`release`) nothing is put for it: what arrives meanwhile is a
    new version of the study, which its own job decodes.
    """

    def __init__(
        self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._studies: OrderedDict[str, _Study] = OrderedDict()
        self._taken: set[str] = set()
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def study_uids(self) -> list[str]:
        with self._lock:
            return list(self._studies)

    def files(self, study_uid: str) -> int:
        """How many of the study's files are cached."""
        with self._lock:
            study = self._studies.get(study_uid)
            return len(study.entries) if study is not None else 0

    def has(self, study_uid: str, fp: Fingerprint) -> bool:
        with self._lock:
            study = self._studies.get(study_uid)
            entry = study.entries.get(fp[0]) if study is not None else None
            return entry is not None and entry.fingerprint == fp

    def is_taken(self, study_uid: str) -> bool:
        with self._lock:
            return study_uid in self._taken

    def put(self, study_uid: str, fp: Fingerprint, decoded: DecodedFile) -> bool:
        """Cache one decoded file; False when it was not kept (the study's job runs, or
        the study alone would exceed the budget)."""
        nbytes = _nbytes(decoded)
        n_frames = len(decoded[0])
        with self._lock:
            if study_uid in self._taken:
                return False
            study = self._studies.get(study_uid)
            if study is None:
                study = self._studies[study_uid] = _Study()
            old = study.entries.pop(fp[0], None)
            if old is not None:
                self._drop(study, old)
            if study.nbytes + nbytes > self.max_bytes or study.frames + n_frames > MAX_SLICES:
                self._forget_if_empty(study_uid)
                return False
            for other in [uid for uid in self._studies if uid != study_uid]:
                if self._nbytes + nbytes <= self.max_bytes:
                    break
                self._evict(other)
            study.entries[fp[0]] = Entry(fp, decoded, nbytes)
            study.nbytes += nbytes
            study.frames += n_frames
            study.touched = self._clock()
            self._nbytes += nbytes
            self._studies.move_to_end(study_uid)
            return True

    def attach(self, study_uid: str, fp: Fingerprint, key: str, outputs: np.ndarray) -> bool:
        """Record a model's outputs for a cached file (False when the file left the
        cache or was replaced meanwhile)."""
        with self._lock:
            study = self._studies.get(study_uid)
            entry = study.entries.get(fp[0]) if study is not None else None
            if study is None or entry is None or entry.fingerprint != fp:
                return False
            entry.outputs[key] = outputs
            study.nbytes += outputs.nbytes
            self._nbytes += outputs.nbytes
            return True

    def take(self, study_uid: str) -> dict[str, Entry]:
        """Every entry of the study, removed from the cache; nothing more is put for it
        until :meth:`release`."""
        with self._lock:
            self._taken.add(study_uid)
            study = self._studies.pop(study_uid, None)
            if study is None:
                return {}
            self._nbytes -= study.nbytes
            return study.entries

    def release(self, study_uid: str) -> None:
        with self._lock:
            self._taken.discard(study_uid)

    def expire(self) -> int:
        """Drop the studies untouched for ``ttl_s``; returns how many."""
        cutoff = self._clock() - self.ttl_s
        with self._lock:
            stale = [uid for uid, s in self._studies.items() if s.touched < cutoff]
            for uid in stale:
                self._evict(uid)
        return len(stale)

    def _drop(self, study: _Study, entry: Entry) -> None:
        nbytes = entry.nbytes + sum(o.nbytes for o in entry.outputs.values())
        study.nbytes -= nbytes
        study.frames -= len(entry.decoded[0])
        self._nbytes -= nbytes

    def _evict(self, study_uid: str) -> None:
        study = self._studies.pop(study_uid, None)
        if study is not None:
            self._nbytes -= study.nbytes
            logger.debug("prefetched study evicted", extra={"study_uid": study_uid})

    def _forget_if_empty(self, study_uid: str) -> None:
        study = self._studies.get(study_uid)
        if study is not None and not study.entries:
            del self._studies[study_uid]


def usable(entries: Mapping[str, Entry], rows: Iterable[Mapping[str, Any]]) -> dict[str, Entry]:
    """The taken entries a job may use, by store-relative path: those whose index row
    (``rows``, the job's instances) still has their fingerprint."""
    out: dict[str, Entry] = {}
    for row in rows:
        entry = entries.get(str(row["path"]))
        if entry is not None and entry.fingerprint == fingerprint(row):
            out[str(row["path"])] = entry
    return out


def known_outputs(entries: Iterable[Entry]) -> dict[str, dict[SliceRef, np.ndarray]]:
    """Per model key, the output row of every frame the model scored ahead."""
    out: dict[str, dict[SliceRef, np.ndarray]] = {}
    for entry in entries:
        frames = entry.decoded[0]
        for key, rows in entry.outputs.items():
            if rows.shape[0] == len(frames):
                known = out.setdefault(key, {})
                for frame, row in zip(frames, rows, strict=True):
                    known[frame.ref] = row
    return out


def score_ahead(
    model: LoadedModel, files: Sequence[tuple[str, DecodedFile]], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """A model's outputs for decoded files (those of a SOP class its card takes), by path,
    computed as a job computes them (:func:`ai_node.preprocess.card_input`)."""
    classes = set(model.card.applicability.sop_classes)
    picked = [
        (path, frames)
        for path, (frames, _) in files
        if frames and frames[0].ref.sop_class_uid in classes
    ]
    if not picked:
        return {}
    size = model.size
    every = [f for _, frames in picked for f in frames]
    grids = np.stack([f.grid if f.grid.shape[-1] == size else f.extra[size] for f in every])
    m1 = np.asarray([f.monochrome1 for f in every], dtype=bool)
    outputs = model.predict_batched(
        card_input(grids, model.card.input, m1 if m1.any() else None), batch_size
    )
    out, start = {}, 0
    for path, frames in picked:
        out[path] = outputs[start : start + len(frames)]
        start += len(frames)
    return out


class Prefetcher:
    """Follows the index and decodes the studies still arriving (module docstring).

    ``plan()`` says what to decode (None: nothing, e.g. before the models are loaded);
    ``path_of`` maps a store-relative path to the file. ``wake`` (or the one given to
    :meth:`start`) is called when a study it followed stops arriving (its job is queued),
    so the worker claims it at once instead of at its next poll.
    """

    def __init__(
        self,
        index: Index,
        path_of: Callable[[str], Path],
        cache: DecodedCache,
        plan: Callable[[], Plan | None],
        poll_s: float = 0.05,
        wake: Callable[[], None] | None = None,
        score_batch: int = 32,
    ) -> None:
        self.index = index
        self.path_of = path_of
        self.cache = cache
        self.plan = plan
        self.poll_s = poll_s
        self._seen: dict[str, int] = {}
        self._arriving: set[str] = set()
        self._cursor: dict[str, float] = {}
        self._unscored: dict[str, dict[str, tuple[Fingerprint, DecodedFile]]] = {}
        self.score_batch = score_batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = wake

    def arriving(self) -> list[tuple[str, int]]:
        """(study UID, received_seq) of every study with instances no job covers yet that
        received one within ``ttl_s``."""
        since = time.time() - self.cache.ttl_s
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(studies.c.study_uid, studies.c.received_seq).where(
                    studies.c.last_received_at >= since,
                    studies.c.received_seq > studies.c.queued_seq,
                )
            ).all()
        return [(str(r[0]), int(r[1])) for r in rows]

    def newly_indexed(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's instances received since the last look, less ``CURSOR_SLACK_S``
        (an index transaction commits a moment after its time received), oldest first.
        A row this misses is decoded by the job."""
        since = self._cursor.get(study_uid, float("-inf")) - CURSOR_SLACK_S
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(
                    instances.c.path,
                    instances.c.size,
                    instances.c.received_at,
                    instances.c.sop_class_uid,
                )
                .where(instances.c.study_uid == study_uid, instances.c.received_at > since)
                .order_by(instances.c.received_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    def poll_once(self) -> int:
        """One look at the index; returns the files decoded."""
        self.cache.expire()
        arriving = self.arriving()
        current = {uid for uid, _ in arriving}
        finished = self._arriving - current
        self._arriving = current
        self._seen = {uid: seq for uid, seq in self._seen.items() if uid in current}
        self._cursor = {uid: t for uid, t in self._cursor.items() if uid in current}
        self._unscored = {uid: f for uid, f in self._unscored.items() if uid in current}
        if finished and self._wake is not None:
            self._wake()
        todo = [(uid, seq) for uid, seq in arriving if self._seen.get(uid) != seq]
        if not todo:
            return 0
        plan = self.plan()
        if plan is None or not plan.sizes:
            return 0
        decoded = 0
        for uid, seq in todo:
            n, complete = self._follow(uid, plan)
            decoded += n
            if complete:
                self._seen[uid] = seq
            if self._stop.is_set():
                break
        return decoded

    def _follow(self, study_uid: str, plan: Plan) -> tuple[int, bool]:
        """Decode the study's instances not in the cache, and score them once
        ``score_batch`` wait; (files decoded, whether every instance was looked at)."""
        rows = self.newly_indexed(study_uid)
        decoded = 0
        complete = True
        unscored = self._unscored.setdefault(study_uid, {})
        for row in rows:
            if str(row["sop_class_uid"]) not in plan.sop_classes:
                self._cursor[study_uid] = float(row["received_at"])
                continue
            fp = fingerprint(row)
            if self.cache.has(study_uid, fp):
                self._cursor[study_uid] = fp[2]
                continue
            if self._stop.is_set() or self.cache.is_taken(study_uid):
                complete = False
                break
            try:
                result = decode_file(self.path_of(fp[0]), plan.sizes[0], plan.sizes[1:])
            except Exception as exc:  # noqa: BLE001 - the job decodes it again and reports it
                logger.debug(
                    "instance not prefetched", extra={"study_uid": study_uid, "error": str(exc)}
                )
                self._cursor[study_uid] = fp[2]
                continue
            decoded += 1
            if not self.cache.put(study_uid, fp, result):
                complete = not self.cache.is_taken(study_uid)
                break
            self._cursor[study_uid] = fp[2]
            unscored[fp[0]] = (fp, result)
            if len(unscored) >= self.score_batch:
                self._score(study_uid, plan)
                unscored = self._unscored.setdefault(study_uid, {})
        return decoded, complete

    def _score(self, study_uid: str, plan: Plan) -> None:
        """Run ``plan.models`` on the study's files decoded since the last run."""
        unscored = self._unscored.pop(study_uid, {})
        if not unscored or not plan.models or self.cache.is_taken(study_uid):
            return
        files = [(path, result) for path, (_, result) in unscored.items()]
        for model in plan.models:
            try:
                outputs = score_ahead(model, files, self.score_batch)
            except Exception as exc:  # noqa: BLE001 - the job scores them and reports it
                logger.debug("slices not scored ahead", extra={"error": str(exc)})
                continue
            for path, rows in outputs.items():
                self.cache.attach(study_uid, unscored[path][0], model.key, rows)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the follower must outlive a database hiccup
                logger.exception("prefetch poll failed; retrying")
            self._stop.wait(self.poll_s if self._arriving else max(self.poll_s, IDLE_POLL_S))

    def start(self, wake: Callable[[], None] | None = None) -> None:
        if wake is not None:
            self._wake = wake
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="radnode-prefetch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
