"""The AI node's speed, as Markdown tables: ``python -m benchmarks.analysis inference|sr|e2e``.

inference: one 300-slice 512x512 synthetic chest CT from disk through decode,
preprocessing and both models, batched (the worker's path) against per-slice
``model.predict`` in the same run.

sr: build, encode and store one result SR that lists a 300-slice study as its evidence.

e2e: dcmtk ``storescu`` sends a study to a fresh ``radnode serve``; the clock runs
from storescu's exit (the last C-STORE response and the release) until
``GET /api/studies/{uid}/result`` answers ``done``. The first study of a server
pays for loading TensorFlow and the models; later ones show the steady state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ai_node.registry import ModelRegistry
from ai_node.synth import StudySpec, write_study
from tests.support.processes import free_port, stop_process, wait_port


def _study(work_dir: Path, slices: int, size: int, seed: int) -> tuple[str, list[Path]]:
    """A cached synthetic chest study (written once per spec)."""
    spec = StudySpec(region="chest", slices=slices, nodules=2, seed=seed, rows=size, columns=size)
    folder = work_dir / f"chest-{slices}x{size}-seed{seed}"
    truth = folder / "truth.json"
    if not truth.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_study(spec, folder)
    info = json.loads(truth.read_text())
    return str(info["study_instance_uid"]), sorted(folder.glob("IM*.dcm"))


def environment(load: tuple[float, float, float] | None = None) -> str:
    """The machine and the settings a figure was taken with, in one line."""
    from radnode_core.settings import Settings

    s = Settings()
    one, five, _ = load or os.getloadavg()
    return (
        f"{os.cpu_count()} CPU cores, load average {one:.1f} (1 min) / {five:.1f} (5 min) "
        f"at start, Python {sys.version.split()[0]}, worker poll {s.worker_poll_s:g} s, "
        f"prefetch {s.prefetch_max_mb} MiB (poll {s.prefetch_poll_s:g} s)"
    )


def _warm_files(files: list[Path]) -> None:
    for f in files:
        f.read_bytes()


def inference_benchmark(
    slices: int, size: int, predict_slices: int, work_dir: Path, registry: Any
) -> str:
    """Slices/s of decode + preprocess + both models: batched vs per-slice ``predict``."""
    from ai_node.analysis import analyse, decode_and_score
    from ai_node.preprocess import frames_of_dataset, load_series, model_input, stack_frames
    from ai_node.registry import ModelSet

    _, files = _study(work_dir, slices, size, seed=1)
    _warm_files(files)
    models = ModelSet(registry)
    region, finding = models.get("region"), models.get("finding")
    warm = load_series(files[:8], compressed=False)
    analyse(warm, models)  # traces the tf.functions once

    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        stack = load_series(files, compressed=False)
        t1 = time.perf_counter()
        analysis = analyse(stack, models)
        t2 = time.perf_counter()
        stack, raw = decode_and_score(files, models, 64, compressed=False)
        analysis = analyse(stack, models, finding_raw=raw)
        t4 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t2 - t0, t4 - t2))
    decode_s, infer_s, total_s, overlapped_s = (
        statistics.median(r[i] for r in runs) for i in range(4)
    )

    t0 = time.perf_counter()
    stack = load_series(files, compressed=False)
    for task in ("region", "finding"):
        m = models.get(task)
        m.predict_batched(model_input(stack.hu, m.window), 64)
    all_slices_s = time.perf_counter() - t0

    import pydicom

    k = min(predict_slices, len(files))
    t0 = time.perf_counter()
    for path in files[:k]:
        one = stack_frames(frames_of_dataset(pydicom.dcmread(path)))
        for m in (region, finding):
            m.keras_model.predict(model_input(one.hu, m.window), verbose=0)
    per_slice_s = (time.perf_counter() - t0) / k

    n = len(stack)
    cores = os.cpu_count()
    rows = [
        (
            "the worker's path: the finding model scores each chunk of 64 decoded slices "
            "while the next decode; then the region model on 24 sampled slices",
            overlapped_s,
            n / overlapped_s,
        ),
        (
            "batched, one step after the other: decode + preprocess, then the region model "
            "on 24 sampled slices and the finding model on all (tf.function, batches of 64)",
            total_s,
            n / total_s,
        ),
        ("  of which decode + preprocess", decode_s, n / decode_s),
        ("  of which inference", infer_s, n / infer_s),
        ("batched, both models on every slice", all_slices_s, n / all_slices_s),
        (
            f"per-slice `model.predict`, both models (timed on {k} slices, scaled)",
            per_slice_s * n,
            1 / per_slice_s,
        ),
    ]
    lines = [
        f"Study: {n} slices of {size}x{size} int16 (synthetic chest, uncompressed); "
        f"{cores} CPU cores; models region {region.version}, finding {finding.version}; "
        f"study score {analysis.score:.3f}.",
        "",
        "| path | seconds for the study | slices/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {secs:.2f} | {rate:.0f} |" for name, secs, rate in rows]
    return "\n".join(lines)


def sr_benchmark(slices: int, size: int, rounds: int, work_dir: Path) -> str:
    """Milliseconds to build (highdicom), encode and store (fsync on) one result SR that
    lists every slice of a ``slices``-slice study as evidence, as the worker writes it."""
    import pydicom

    from ai_node.analysis import StudyAnalysis
    from ai_node.pipeline import encode
    from ai_node.preprocess import SliceRef, SliceStack
    from ai_node.sr import build_sr, evidence_of_stack
    from radnode.assembly import build_node
    from radnode_core.settings import Settings
    from tests.support.analysis import REPORT_CONTEXT

    uid, files = _study(work_dir, slices, size, seed=100)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    refs = [SliceRef(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in headers]
    stack = SliceStack(
        hu=np.zeros((slices, 1, 1), np.float32),
        positions=np.arange(slices, dtype=np.float64),
        refs=refs,
        headers={r.sop_instance_uid: h for r, h in zip(refs, headers, strict=True)},
    )
    ctx = dataclasses.replace(REPORT_CONTEXT, device_uid="2.25.1", software_version="radnode bench")
    data = Path(tempfile.mkdtemp(prefix="radnode-sr-"))
    node = build_node(Settings(data_dir=data / "data", fsync=True))
    rows = []
    try:
        for n_refs in (1, 5):
            picked = list(range(slices // 2, slices // 2 + n_refs))
            timings: list[tuple[float, float, float, float]] = []
            for i in range(rounds + 1):
                analysis = StudyAnalysis(
                    "chest",
                    {"chest": 0.99},
                    in_scope=True,
                    score=0.9,
                    driving_slice=picked[0],
                    slice_scores=[0.1] * slices,
                    evidence_slices=picked,
                    model_versions={"finding": f"1.0.{n_refs}.{i}", "region": "1.0.0"},
                    label="lesion",
                )
                c0, t0 = time.process_time(), time.perf_counter()
                shown = [refs[j] for j in picked]
                evidence, library = evidence_of_stack(stack, shown)
                sr = build_sr(evidence, analysis, shown, ctx, uid, 1, library=library)
                t1 = time.perf_counter()
                body = encode(sr)
                t2 = time.perf_counter()
                node.ingestor.ingest_built(body, source="ai", analyze=False)
                t3 = time.perf_counter()
                if i:  # the first round warms the code paths
                    timings.append((t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0))
            build_s, encode_s, store_s, cpu_s = (
                statistics.median(t[k] for t in timings) for k in range(4)
            )
            rows.append((n_refs, build_s, encode_s, store_s, cpu_s, len(body)))
    finally:
        node.close()
        shutil.rmtree(data, ignore_errors=True)
    lines = [
        f"One SR listing all {slices} slices as evidence (Current Requested Procedure Evidence "
        f"Sequence), its image library the slice it draws on; median of {rounds} "
        f"rounds; store with fsync. Environment: {environment()}.",
        "",
        "| slices referenced by the content | build (ms) | encode (ms) | store (ms) "
        "| total (ms) | CPU (ms) | bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n_refs, b, e, st, cpu, n in rows:
        lines.append(
            f"| {n_refs} | {1000 * b:.0f} | {1000 * e:.0f} | {1000 * st:.0f} "
            f"| {1000 * (b + e + st):.0f} | {1000 * cpu:.0f} | {n} |"
        )
    return "\n".join(lines)


def start_serve(
    data_dir: Path,
    dicom_port: int,
    http_port: int,
    log: IO[bytes],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`radnode serve` on the given loopback ports, quiet logs into ``log`` (for benchmarks)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--dicom-port",
            str(dicom_port),
            "--http-port",
            str(http_port),
            "--log-level",
            "WARNING",
            "--log-format",
            "text",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def e2e_benchmark(slices: int, size: int, runs: int, work_dir: Path) -> str:
    """Seconds from the last C-STORE response to the SR's result being queryable."""
    import httpx

    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed")
    studies = [_study(work_dir, slices, size, seed=100 + i) for i in range(runs)]
    load_at_start = os.getloadavg()
    data = Path(tempfile.mkdtemp(prefix="radnode-e2e-"))
    dicom_port, http_port = free_port(), free_port()
    log = (data.parent / f"{data.name}.log").open("wb")
    proc = start_serve(data, dicom_port, http_port, log)
    env = {**os.environ, "TCP_NODELAY": "1"}
    results = []
    try:
        wait_port(dicom_port, proc)
        wait_port(http_port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:
            for i, (uid, files) in enumerate(studies):
                _warm_files(files)
                t0 = time.perf_counter()
                sent = subprocess.run(
                    [
                        storescu,
                        "-aet",
                        "BENCH",
                        "-aec",
                        "RADNODE",
                        "127.0.0.1",
                        str(dicom_port),
                        *map(str, files),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if sent.returncode != 0:
                    raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
                t1 = time.perf_counter()
                body: dict[str, Any] = {}
                while time.perf_counter() - t1 < 300:
                    r = client.get(f"/api/studies/{uid}/result")
                    if r.status_code == 200:
                        body = r.json()
                        if body["status"] in ("done", "out_of_scope", "failed"):
                            break
                    time.sleep(0.02)
                t2 = time.perf_counter()
                results.append((i, t1 - t0, t2 - t1, body))
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
    lines = [
        f"{slices} slices of {size}x{size} per study, one storescu association each, "
        f"`radnode serve` defaults (completion on association release).",
        "",
        f"Environment: {environment(load_at_start)}.",
        "",
        "| study | send (s) | last C-STORE response -> result `done` (s) | status "
        "| job: decode / inference / SR / total (s) | slices decoded while arriving |",
        "|---|---:|---:|---|---|---:|",
    ]
    for i, send_s, wait_s, body in results:
        t = body.get("timings", {})
        note = (
            "first (server just started: its model warm-up overlaps the send)" if i == 0 else "warm"
        )
        prefetched = body.get("details", {}).get("prefetched_instances", "-")
        lines.append(
            f"| {i + 1} {note} | {send_s:.2f} | {wait_s:.2f} | {body.get('status')} | "
            f"{t.get('decode_s')} / {t.get('inference_s')} / {t.get('sr_s')} / "
            f"{t.get('total_s')} | {prefetched} |"
        )
    warm = [r[2] for r in results[1:]] or [results[0][2]]
    lines += ["", f"Median time to result, warm: {np.median(warm):.2f} s."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.analysis", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    inf = sub.add_parser("inference", help="slices/s: decode, preprocess, both models")
    inf.add_argument("--models-dir", type=Path, help="model registry (default: the shipped models)")
    inf.add_argument("--slices", type=int, default=300)
    inf.add_argument("--size", type=int, default=512)
    inf.add_argument(
        "--predict-slices", type=int, default=30, help="slices timed through per-slice predict"
    )
    inf.add_argument("--work-dir", type=Path, default=Path("bench-work"))
    sr = sub.add_parser("sr", help="ms to build, encode and store a result SR")
    sr.add_argument("--slices", type=int, default=300)
    sr.add_argument("--size", type=int, default=512)
    sr.add_argument("--rounds", type=int, default=9)
    sr.add_argument("--work-dir", type=Path, default=Path("bench-work"))
    e2e = sub.add_parser("e2e", help="storescu -> radnode serve -> SR queryable")
    e2e.add_argument("--slices", type=int, default=300)
    e2e.add_argument("--size", type=int, default=512)
    e2e.add_argument("--runs", type=int, default=3)
    e2e.add_argument("--work-dir", type=Path, default=Path("bench-work"))
    e2e.add_argument(
        "--via",
        choices=["radnode", "orthanc"],
        default="radnode",
        help="orthanc: storescu -> Orthanc -> radnode -> SR in Orthanc, beside storescu -> "
        "radnode -> SR in Orthanc (benchmarks.pacs)",
    )
    args = parser.parse_args(argv)
    if args.kind == "inference":
        registry = ModelRegistry(args.models_dir)
        print(
            inference_benchmark(
                args.slices, args.size, args.predict_slices, args.work_dir, registry
            )
        )
    elif args.kind == "sr":
        print(sr_benchmark(args.slices, args.size, args.rounds, args.work_dir))
    elif args.via == "orthanc":
        from benchmarks.pacs import orthanc_e2e_benchmark  # it imports this module

        print(orthanc_e2e_benchmark(args.slices, args.size, args.runs, args.work_dir))
    else:
        print(e2e_benchmark(args.slices, args.size, args.runs, args.work_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
