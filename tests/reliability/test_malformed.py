"""Hostile input: mutated DICOM datasets by C-STORE and STOW-RS.

Every mutant is answered with a status within 30 s; the server never dies; a mutant
is stored only if it is still a well-formed dataset (independent check in
tests/support/mutate.py), and then byte for byte; a refused one leaves nothing; memory
does not grow by 10 % after a warm-up; a valid instance is stored right after.
"""

from __future__ import annotations

import collections
import secrets
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE, _config

from tests.support.mutate import Mutant, load_samples, mutants, well_formed
from tests.support.radnode_process import RadnodeProcess
from tests.support.reliability import (
    assert_store_consistent,
    indexed_path_of,
    record,
    rss_kib,
    scale,
    stored_dataset,
)

COUNT = scale(130, 1000)  # mutants per edge
WARM_UP = scale(60, 200)  # mutants of another seed, sent before the memory baseline
SEED = 9
HANG_S = 30.0
# PS3.4 B.2.3 refusals (and warnings) a malformed instance may get; 0xA700 would mean
# the handler hit an internal error, 0xC211 an exception pynetdicom caught.
REFUSALS = {0xA900, 0xC000, 0xB000, 0xB006, 0xB007}


def _contexts(ms: list[Mutant]) -> list[tuple[str, str]]:
    pairs = sorted({(m.sop_class_uid, m.transfer_syntax) for m in ms})
    assert len(pairs) < 127, len(pairs)
    return pairs


def send_by_c_store(port: int, ms: list[Mutant], scratch: Path) -> list[tuple[int, float]]:
    """(status, seconds) of each mutant, its dataset bytes sent exactly as they are.

    A broken association is re-established and its C-STORE recorded as -1 (no answer).
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = HANG_S
    for sop_class, ts in _contexts(ms):
        ae.add_requested_context(sop_class, ts)
    out: list[tuple[int, float]] = []
    assoc = None
    path = scratch / "mutant.dcm"
    try:
        for m in ms:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
                assert assoc.is_established, "association refused"
            path.write_bytes(m.part10())
            started = time.monotonic()
            try:
                rsp = assoc.send_c_store(path, msg_id=m.number % 65535 + 1)
                status = int(rsp.Status) if "Status" in rsp else -1
            except (RuntimeError, ValueError) as exc:  # the association died under us
                status = -2
                print(f"mutant {m.number}: {exc}")
            out.append((status, time.monotonic() - started))
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return out


def send_by_stow(base: str, ms: list[Mutant], meta_mutation_every: int = 7
                 ) -> list[tuple[int, dict, float, bytes]]:
    """(HTTP status, response body, seconds, part sent) of one STOW-RS request per mutant.

    Every ``meta_mutation_every``-th part also has a byte of its File Meta Information
    flipped (STOW-RS parses that group itself).
    """
    out = []
    with httpx.Client(base_url=base, timeout=HANG_S) as client:
        for m in ms:
            part = bytearray(m.part10())
            if m.number % meta_mutation_every == 0:
                at = 132 + (m.number * 7919) % 150
                part[at] ^= 1 << (m.number % 8)
            boundary = secrets.token_hex(16)
            body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + bytes(part) + f"\r\n--{boundary}--\r\n".encode())
            started = time.monotonic()
            r = client.post(
                "/dicom-web/studies", content=body,
                headers={"Content-Type":
                         f'multipart/related; type="application/dicom"; boundary={boundary}'},
            )
            seconds = time.monotonic() - started
            try:
                answer = r.json()
            except ValueError:
                answer = {"text": r.text[:200]}
            out.append((r.status_code, answer, seconds, bytes(part)))
    return out


def _check_stored(data_dir: Path, m: Mutant, problems: list[str]) -> bool:
    """A stored mutant must be well-formed and kept byte for byte."""
    relative = indexed_path_of(data_dir, m.sop_instance_uid)
    if relative is None:
        problems.append(f"{m.number} {m.kind}/{m.source}: acknowledged but not indexed")
        return False
    if not well_formed(m.dataset, m.transfer_syntax):
        problems.append(f"{m.number} {m.kind}/{m.source}: malformed dataset was stored")
    if stored_dataset(data_dir, relative) != m.dataset:
        problems.append(f"{m.number} {m.kind}/{m.source}: stored bytes differ from sent")
    return True


def _memory_growth(pid: int, before: int) -> float:
    return (rss_kib(pid) - before) / before


@pytest.fixture(scope="module")
def samples():
    return load_samples()


def test_mutated_instances_by_c_store(tmp_path, samples, chest_study):
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    assert node.proc is not None
    try:
        send_by_c_store(node.dicom_port, mutants(samples, WARM_UP, SEED + 1000), tmp_path)
        rss_before = rss_kib(node.proc.pid)
        ms = mutants(samples, COUNT, SEED)
        results = send_by_c_store(node.dicom_port, ms, tmp_path)
        rss_after = rss_kib(node.proc.pid)
        assert node.proc.poll() is None, "the SCP died"

        problems: list[str] = []
        outcome: collections.Counter[str] = collections.Counter()
        stored = 0
        for m, (status, seconds) in zip(ms, results, strict=True):
            outcome[f"{m.kind}:{'stored' if status == 0 else f'0x{status & 0xFFFF:04X}'}"] += 1
            if seconds > HANG_S:
                problems.append(f"{m.number} {m.kind}: answered after {seconds:.1f}s")
            if status == 0x0000:
                stored += _check_stored(node.data_dir, m, problems)
            elif status in REFUSALS:
                if indexed_path_of(node.data_dir, m.sop_instance_uid) is not None:
                    problems.append(f"{m.number} {m.kind}: refused (0x{status:04X}) yet indexed")
            else:
                problems.append(f"{m.number} {m.kind}/{m.source}: status {status:#06x}")
        assert problems == [], "\n".join(problems[:40])
        assert assert_store_consistent(node.data_dir) == stored + _warm_up_stored(node.data_dir, ms)

        # A valid instance is stored right after, on a new association.
        _study, files = chest_study
        valid = send_by_c_store(node.dicom_port, [_as_mutant(files[0])], tmp_path)
        assert [s for s, _ in valid] == [0x0000]
        log = node.log()
        assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
        growth = (rss_after - rss_before) / rss_before
        record("malformed_c_store", mutants=len(ms), stored=stored, refused=len(ms) - stored,
               warm_up=WARM_UP, rss_before_kib=rss_before, rss_after_kib=rss_after,
               rss_growth=round(growth, 4), slowest_s=round(max(s for _, s in results), 3),
               outcomes=dict(sorted(outcome.items())))
        assert growth < 0.10, (rss_before, rss_after)
    finally:
        node.stop()


def _warm_up_stored(data_dir: Path, ms: list[Mutant]) -> int:
    """Instances the warm-up stored (the index minus this run's mutants)."""
    from tests.support.reliability import indexed_paths

    ours = {indexed_path_of(data_dir, m.sop_instance_uid) for m in ms} - {None}
    return len(set(indexed_paths(data_dir)) - ours)


def _as_mutant(path: Path) -> Mutant:
    from tests.support.dicom_bytes import dataset_bytes

    ds = dcmread(path, stop_before_pixels=True)
    return Mutant(-1, "valid", path.name, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                  str(ds.file_meta.TransferSyntaxUID), dataset_bytes(path))


def test_mutated_instances_by_stow_rs(tmp_path, samples, chest_study):
    node = RadnodeProcess(tmp_path / "data", "api").start()
    assert node.proc is not None
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        send_by_stow(base, mutants(samples, WARM_UP, SEED + 2000))
        rss_before = rss_kib(node.proc.pid)
        ms = mutants(samples, COUNT, SEED + 1)
        results = send_by_stow(base, ms)
        rss_after = rss_kib(node.proc.pid)
        assert node.proc.poll() is None, "the HTTP server died"

        problems: list[str] = []
        outcome: collections.Counter[str] = collections.Counter()
        stored = 0
        for m, (code, answer, seconds, part) in zip(ms, results, strict=True):
            failed = answer.get("00081198", {}).get("Value", [])
            ok = answer.get("00081199", {}).get("Value", [])
            if seconds > HANG_S:
                problems.append(f"{m.number} {m.kind}: answered after {seconds:.1f}s")
            if code == 200 and len(ok) == 1 and not failed:
                outcome[f"{m.kind}:stored"] += 1
                meta_ok = m.number % 7 != 0
                if meta_ok:
                    stored += _check_stored(node.data_dir, m, problems)
                else:
                    # A byte of the meta flipped, harmlessly: what the server took for the
                    # dataset must be the rest of the part, unchanged and well formed.
                    relative = indexed_path_of(node.data_dir, m.sop_instance_uid)
                    if relative is None:
                        problems.append(f"{m.number} {m.kind}: acknowledged but not indexed")
                        continue
                    stored += 1
                    kept = stored_dataset(node.data_dir, relative)
                    ts = dcmread(node.data_dir / relative).file_meta.TransferSyntaxUID
                    if not part.endswith(kept) or not well_formed(kept, ts):
                        problems.append(f"{m.number} {m.kind}: stored dataset is not as sent")
            elif code == 409 and len(failed) == 1 and not ok:
                reason = failed[0].get("00081197", {}).get("Value", [None])[0]
                outcome[f"{m.kind}:0x{reason:04X}" if reason is not None else f"{m.kind}:?"] += 1
                if reason not in REFUSALS:
                    problems.append(f"{m.number} {m.kind}/{m.source}: FailureReason {reason}")
                if indexed_path_of(node.data_dir, m.sop_instance_uid) is not None:
                    problems.append(f"{m.number} {m.kind}: refused yet indexed")
            else:
                problems.append(f"{m.number} {m.kind}/{m.source}: HTTP {code} {answer}")
        assert problems == [], "\n".join(problems[:40])
        total = assert_store_consistent(node.data_dir)
        assert total == stored + _warm_up_stored(node.data_dir, ms)

        _study, files = chest_study
        valid = _as_mutant(files[1])
        [(code, answer, _, _)] = send_by_stow(base, [valid], meta_mutation_every=10**9)
        assert code == 200 and len(answer["00081199"]["Value"]) == 1, answer
        assert assert_store_consistent(node.data_dir) == total + 1
        log = node.log()
        assert "Traceback" not in log, log[-3000:]
        growth = (rss_after - rss_before) / rss_before
        record("malformed_stow_rs", mutants=len(ms), stored=stored, refused=len(ms) - stored,
               warm_up=WARM_UP, rss_before_kib=rss_before, rss_after_kib=rss_after,
               rss_growth=round(growth, 4), slowest_s=round(max(r[2] for r in results), 3),
               outcomes=dict(sorted(outcome.items())))
        assert growth < 0.10, (rss_before, rss_after)
    finally:
        node.stop()
