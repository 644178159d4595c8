"""Decoding a study while it arrives (ai_node.prefetch): the result is the one a job that
decodes everything makes, whatever arrived after the prefetch, was replaced, or was lost
with a restarted worker; the cache stays within its budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from ai_node.pipeline import AnalysisPipeline
from ai_node.prefetch import (
    HEADER_BYTES,
    DecodedCache,
    Entry,
    Plan,
    Prefetcher,
    fingerprint,
    known_outputs,
)
from ai_node.preprocess import SliceRef, _Frame
from ai_node.registry import ModelSet
from ai_node.results import ResultStore
from ai_node.synth import StudySpec, write_study
from ai_node.worker import Worker
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import ingest_files, run_all, study_result

SPEC = StudySpec(
    region="chest", slices=40, nodules=2, seed=21, rows=128, columns=128, pixel_spacing_mm=2.8
)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(name: str, **settings: Any) -> Node:
        n = build_node(Settings(data_dir=tmp_path / name, fsync=False, **settings))
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.close()


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    study, files = write_study(SPEC, tmp_path_factory.mktemp("study"))
    return study.study_instance_uid, files


def loaded_pipeline(node: Node, models: ModelSet) -> AnalysisPipeline:
    pipeline = AnalysisPipeline(node, models)
    for card in models.active_cards():
        models.get(card.name)
    return pipeline


def result_row(node: Node, uid: str) -> dict[str, Any]:
    """The study's newest result row as stored (its details with every slice score)."""
    answer = study_result(node, uid)
    [row] = ResultStore(node.index).rows(uid, answer["version"])
    return row


def full_result(make_node: Any, models: ModelSet, files: list[Path], uid: str) -> dict:
    """The study's result on a node that decodes everything in the job."""
    node = make_node("full", prefetch_max_mb=0)
    pipeline = loaded_pipeline(node, models)
    assert pipeline.follower is None
    ingest_files(node, files)
    node.queue.enqueue_if_due(uid, "manual")
    run_all(node, pipeline)
    return result_row(node, uid)


def assert_same_result(got: dict, want: dict) -> None:
    assert got["status"] == want["status"] == "done"
    assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert got["label"] == want["label"]
    g, w = got["details"], want["details"]
    np.testing.assert_allclose(g["slice_scores"], w["slice_scores"], atol=2e-4)
    assert g["driving_sop_instance_uid"] == w["driving_sop_instance_uid"]
    assert g["evidence_sop_instance_uids"] == w["evidence_sop_instance_uids"]
    assert g["slices"] == w["slices"]


def test_incremental_result_equals_full_result(make_node, shipped_models, study_files) -> None:
    uid, files = study_files
    want = full_result(make_node, shipped_models, files, uid)

    node = make_node("incremental")
    pipeline = loaded_pipeline(node, shipped_models)
    assert pipeline.follower is not None
    pipeline.follower.score_batch = 16
    ingest_files(node, files[:15])
    assert pipeline.follower.poll_once() == 15
    ingest_files(node, files[15:32])
    assert pipeline.follower.poll_once() == 17
    assert pipeline.follower.poll_once() == 0  # nothing new
    ingest_files(node, files[32:])  # the tail arrives after the last look
    node.queue.enqueue_if_due(uid, "released")
    assert pipeline.follower.poll_once() == 0  # complete: no longer followed
    run_all(node, pipeline)

    got = result_row(node, uid)
    assert got["details"]["prefetched_instances"] == 32
    assert got["details"]["prefetched_scored_slices"] == 32  # scored in batches of 16
    assert_same_result(got, want)
    assert pipeline.prefetched.study_uids() == []
    assert pipeline.prefetched.nbytes == 0


def test_replaced_instance_is_decoded_again(make_node, shipped_models, study_files) -> None:
    """An instance replaced after it was decoded ahead is decoded from its new bytes."""
    uid, files = study_files
    node = make_node("replace", duplicate_policy="replace")
    pipeline = loaded_pipeline(node, shipped_models)
    assert pipeline.follower is not None
    ingest_files(node, files)
    assert pipeline.follower.poll_once() == len(files)

    changed = pydicom.dcmread(files[20])
    pixels = changed.pixel_array.copy()
    pixels[:] = pixels.max()
    changed.PixelData = pixels.tobytes()
    replacement = node.settings.data_dir.parent / "replaced.dcm"
    changed.save_as(replacement, enforce_file_format=True)
    time.sleep(0.01)  # a later time received
    ingest_files(node, [replacement])
    node.queue.enqueue_if_due(uid, "released")
    run_all(node, pipeline)
    got = result_row(node, uid)
    assert got["details"]["prefetched_instances"] == len(files) - 1

    reference = make_node("replace-full", duplicate_policy="replace", prefetch_max_mb=0)
    ingest_files(reference, [*files[:20], replacement, *files[21:]])
    reference.queue.enqueue_if_due(uid, "manual")
    run_all(reference, loaded_pipeline(reference, shipped_models))
    assert_same_result(got, result_row(reference, uid))


def test_restarted_worker_decodes_what_it_lost(make_node, shipped_models, study_files) -> None:
    """The cache dies with its worker: the next one's job decodes the study itself."""
    uid, files = study_files
    want = full_result(make_node, shipped_models, files, uid)
    node = make_node("restart")
    before = loaded_pipeline(node, shipped_models)
    assert before.follower is not None
    ingest_files(node, files)
    assert before.follower.poll_once() == len(files)
    node.queue.enqueue_if_due(uid, "released")
    del before  # the worker process ends, its cache with it

    after = loaded_pipeline(node, shipped_models)
    assert after.prefetched.nbytes == 0
    run_all(node, after)
    got = result_row(node, uid)
    assert got["details"]["prefetched_instances"] == 0
    assert_same_result(got, want)


def test_worker_decodes_while_the_study_arrives(make_node, shipped_models, study_files) -> None:
    """The running worker follows the index by itself and is woken when the study is
    queued; most of the study was decoded before its job started."""
    uid, files = study_files
    node = make_node("running", worker_poll_s=30.0, prefetch_poll_s=0.01)
    pipeline = loaded_pipeline(node, shipped_models)
    worker = Worker(node.queue, pipeline, node.metrics, poll_s=30.0)
    follow = threading.Thread(target=worker.run, daemon=True)
    follow.start()
    try:
        for f in files:
            ingest_files(node, [f])
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        while pipeline.prefetched.files(uid) < len(files) // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.queue.enqueue_if_due(uid, "released")
        started = time.monotonic()
        while time.monotonic() - started < 20:
            row = node.queue.jobs_for(uid)
            if row and row[0]["state"] == "done":
                break
            time.sleep(0.02)
        waited = time.monotonic() - started
    finally:
        worker.stop()
        follow.join(timeout=30)
    result = result_row(node, uid)
    assert result["status"] == "done"
    assert waited < 15, "the worker was not woken (its poll is 30 s)"
    assert result["details"]["prefetched_instances"] >= len(files) // 2


# --------------------------------------------------------------------------- the cache


def decoded(n_frames: int = 1, size: int = 32) -> tuple[list[_Frame], pydicom.Dataset]:
    frames = [
        _Frame(np.zeros((size, size), np.float32), float(i), SliceRef("1.2", f"1.2.{i}"))
        for i in range(n_frames)
    ]
    return frames, pydicom.Dataset()


ONE = 32 * 32 * 4 + HEADER_BYTES  # what decoded() counts as


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fp(i: int) -> tuple[str, int, float]:
    return (f"f{i}.dcm", 100, 1.0)


def test_cache_stays_within_its_budget_evicting_the_oldest_study() -> None:
    cache = DecodedCache(max_bytes=4 * ONE, ttl_s=60)
    for i in range(2):
        assert cache.put("old", fp(i), decoded())
    for i in range(2):
        assert cache.put("new", fp(i), decoded())
    assert cache.nbytes == 4 * ONE
    assert cache.put("newest", fp(0), decoded())
    assert cache.nbytes <= 4 * ONE
    assert "old" not in cache.study_uids()
    assert set(cache.study_uids()) == {"new", "newest"}


def test_a_study_larger_than_the_budget_is_not_cached_beyond_it() -> None:
    """A sender that never finishes its study cannot make the cache grow."""
    cache = DecodedCache(max_bytes=10 * ONE, ttl_s=60)
    kept = sum(cache.put("endless", fp(i), decoded()) for i in range(1000))
    assert kept == 10
    assert cache.nbytes == 10 * ONE
    assert cache.put("other", fp(0), decoded())  # evicts the endless study, fits
    assert cache.nbytes <= 10 * ONE
    assert not cache.put("huge", fp(0), decoded(n_frames=100))


def test_cache_drops_a_study_untouched_for_its_ttl() -> None:
    clock = Clock()
    cache = DecodedCache(max_bytes=100 * ONE, ttl_s=10, clock=clock)
    cache.put("a", fp(0), decoded())
    clock.now = 5
    cache.put("b", fp(0), decoded())
    clock.now = 12
    assert cache.expire() == 1
    assert cache.study_uids() == ["b"]
    assert cache.nbytes == ONE


def test_entries_are_replaced_and_taken_once() -> None:
    cache = DecodedCache(max_bytes=100 * ONE, ttl_s=10)
    cache.put("s", fp(0), decoded())
    newer = ("f0.dcm", 101, 2.0)
    cache.put("s", newer, decoded())
    assert cache.nbytes == ONE
    assert cache.has("s", newer) and not cache.has("s", fp(0))
    taken = cache.take("s")
    assert [e.fingerprint for e in taken.values()] == [newer]
    assert cache.nbytes == 0
    assert not cache.put("s", fp(1), decoded())  # its job runs
    cache.release("s")
    assert cache.put("s", fp(1), decoded())


def test_fingerprint_changes_when_an_instance_is_replaced() -> None:
    row = {"path": "a/b.dcm", "size": 10, "received_at": 1.0}
    assert fingerprint(row) != fingerprint({**row, "size": 11})
    assert fingerprint(row) != fingerprint({**row, "received_at": 2.0})


def test_nothing_is_decoded_before_the_models_are_loaded(make_node, study_files) -> None:
    uid, files = study_files
    node = make_node("cold")
    cache = DecodedCache(2**30, 60)
    follower = Prefetcher(node.index, node.store.path_of, cache, lambda: None)
    ingest_files(node, files[:3])
    assert follower.poll_once() == 0
    assert cache.nbytes == 0


def test_follower_wakes_the_worker_when_a_study_is_queued(make_node, study_files) -> None:
    uid, files = study_files
    node = make_node("wake")
    woken: list[bool] = []
    cache = DecodedCache(2**30, 60)
    plan = Plan(frozenset({"1.2.840.10008.5.1.4.1.1.2"}), (32,))
    follower = Prefetcher(
        node.index, node.store.path_of, cache, lambda: plan, wake=lambda: woken.append(True)
    )
    ingest_files(node, files[:3])
    assert follower.poll_once() == 3
    assert not woken
    node.queue.enqueue_if_due(uid, "released")
    follower.poll_once()
    assert woken == [True]


def test_outputs_scored_ahead_are_kept_per_model_version() -> None:
    frames, header = decoded(n_frames=2)
    entry = Entry(fp(0), (frames, header), ONE, {"finding:1.0.0": np.ones((2, 1), np.float32)})
    stale = Entry(fp(1), decoded(), ONE, {"finding:1.0.0": np.ones((3, 1), np.float32)})
    known = known_outputs([entry, stale])
    assert set(known) == {"finding:1.0.0"}
    assert set(known["finding:1.0.0"]) == {f.ref for f in frames}  # row count must match
