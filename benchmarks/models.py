"""Several models at once, as Markdown tables: ``python -m benchmarks.models``.

What the worker does with 1, 2 and 3 active models, through the analysis pipeline itself
(:class:`ai_node.pipeline.AnalysisPipeline`: route, decode once, every model batched in its
own thread while the series decodes, an SR and a results row per model):

* a 300-slice 512x512 synthetic chest CT (``ai_node.synth``): the shipped finding model
  (with the region model's verdict), then + the first prototype's CNN (128x128x1, conv
  32/64/128 + max pools, dense 128, sigmoid; saved as legacy .h5), then + a
  three-window 3-channel CNN;
* 50 synthetic chest radiographs (``ai_node.xray_synth``: one CR image per study,
  2048x2048 12-bit, half MONOCHROME1): the shipped chest-xray-opacity model, then +
  DenseNet121 (224x224x3, ImageNet standardisation), then + a small radiograph CNN.

Then DenseNet121's own throughput (images/s, batched, on random inputs), and the memory
each loaded model takes (the process's resident set before and after loading it and
tracing its inference). Every model is built here with random weights (no download),
packaged with a card and imported as a user would (the shipped ones come from
``ai_node/models``). TensorFlow runs where it finds a
device: on a machine with a GPU the same command measures the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.model_packages import ct_card, cxr_card

CT_SETS = (("finding",), ("finding", "proto-ct"), ("finding", "proto-ct", "ct-3window"))
XR_SETS = (
    ("chest-xray-opacity",),
    ("chest-xray-opacity", "cxr-densenet"),
    ("chest-xray-opacity", "cxr-densenet", "cxr-small"),
)


def rss_mb() -> float:
    """The process's resident set (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _card(name: str, **changes: Any) -> dict[str, Any]:
    """The tests' CT or chest X-ray card (:mod:`tests.support.model_packages`), as a
    benchmark model: version ``bench``, neutral labels, a long timeout; ``changes`` replace
    whole sections."""
    base = ct_card if name.startswith(("proto", "ct-")) else cxr_card
    card = base(
        name,
        "bench",
        intended_use="Benchmarking radnode. Random weights: meaningless outputs.",
        training_data="none: random weights",
        timeout_s=600,
    )
    card["outputs"] = {"labels": ["negative", "positive"], "positive_label": "positive"}
    card.update(changes)
    return card


def build_models(kinds: Sequence[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each benchmark model (random weights) with its card."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    out: dict[str, tuple[Any, dict[str, Any]]] = {}

    def cnn(size: int, channels: int, filters: Sequence[int], dense: int) -> Any:
        inputs = keras.Input((size, size, channels))
        x = inputs
        for f in filters:
            x = layers.Conv2D(f, 3, activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(dense, activation="relu")(x)
        return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))

    lung = {"scale": "hu_window", "windows": [{"center": -600, "width": 1500}]}
    if "proto-ct" in kinds:
        out["proto-ct"] = (
            cnn(128, 1, (32, 64, 128), 128),
            _card(
                "proto-ct",
                input={"kind": "slice", "size": [128, 128], "channels": 1, "normalisation": lung},
                aggregation={"method": "max_moving_average", "window": 3},
                model_file="model.h5",
            ),
        )
    if "ct-3window" in kinds:
        windows = [
            {"center": -600, "width": 1500},
            {"center": 40, "width": 400},
            {"center": 400, "width": 1800},
        ]
        out["ct-3window"] = (
            cnn(128, 3, (16, 32, 64), 64),
            _card(
                "ct-3window",
                input={
                    "kind": "slice",
                    "size": [128, 128],
                    "channels": 3,
                    "normalisation": {"scale": "hu_window", "windows": windows},
                },
                aggregation={"method": "top_k_mean", "k": 3},
                model_file="model.keras",
            ),
        )
    xr_input = {
        "kind": "image",
        "size": [224, 224],
        "channels": 3,
        "normalisation": {
            "scale": "percentile",
            "percentiles": [0.5, 99.5],
            "standardise": "imagenet",
        },
    }
    if "cxr-densenet" in kinds:
        out["cxr-densenet"] = (
            keras.applications.DenseNet121(
                weights=None,
                input_shape=(224, 224, 3),
                classes=1,
                classifier_activation="sigmoid",
            ),
            _card("cxr-densenet", input=xr_input, model_file="model.keras"),
        )
    for name, size in (("cxr-small", 224), ("cxr-small-b", 128)):
        if name in kinds:
            small_input = {**xr_input, "size": [size, size]}
            out[name] = (
                cnn(size, 3, (16, 32, 64), 64),
                _card(name, input=small_input, model_file="model.keras"),
            )
    return out


def package(folder: Path, model: Any, card: dict[str, Any]) -> Path:
    import hashlib

    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / card["model_file"])
    card = {
        **card,
        "sha256": hashlib.sha256((folder / card["model_file"]).read_bytes()).hexdigest(),
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def write_radiographs(out: Path, count: int, size: int) -> list[tuple[str, Path]]:
    """``count`` one-image synthetic PA chest radiograph studies (``radnode synth xray``:
    CR, 12 bits stored, every second one MONOCHROME1, every third with opacities)."""
    from ai_node.xray_synth import XraySpec, generate_radiograph

    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for i in range(count):
        spec = XraySpec(
            seed=i,
            size=size,
            sop_class="cr",
            monochrome1=i % 2 == 1,
            opacities=2 if i % 3 == 0 else 0,
        )
        image, ds = generate_radiograph(spec)
        path = out / f"CR{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append((image.study_instance_uid, path))
    return studies


def _ingest(node: Any, files: Sequence[Path]) -> str:
    """Store files as a C-STORE would and queue their study's job; its Study Instance UID."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    from ai_node.pipeline import encode

    uid = ""
    for f in files:
        ds = pydicom.dcmread(f)
        uid = str(ds.StudyInstanceUID)
        node.ingestor.ingest(encode(ds), ExplicitVRLittleEndian, source="bench")
    node.queue.enqueue_if_due(uid, "manual")
    return uid


def _activate_only(registry: Any, names: Sequence[str], deciders: Sequence[str]) -> None:
    for name in registry.names():
        if name in names or name in deciders:
            registry.activate(name, registry.versions(name)[-1])
        else:
            registry.deactivate(name)


def _run_jobs(node: Any, pipeline: Any) -> tuple[float, list[dict[str, Any]]]:
    """Process every queued job; (seconds, each job's outcome)."""
    outcomes = []
    started = time.perf_counter()
    while True:
        job = node.queue.claim("bench")
        if job is None:
            break
        outcomes.append(pipeline.process(job))
        node.queue.complete(job, "bench")
    return time.perf_counter() - started, outcomes


def throughput(
    work: Path, registry: Any, slices: int, size: int, radiographs: int, xr_size: int
) -> list[dict[str, Any]]:
    """The worker's throughput for each model set (module docstring)."""
    from ai_node.pipeline import AnalysisPipeline
    from ai_node.registry import ModelSet
    from ai_node.synth import StudySpec, write_study
    from radnode.assembly import build_node
    from radnode_core.settings import Settings

    ct_dir = work / f"ct-{slices}x{size}"
    if not (ct_dir / "truth.json").is_file():
        shutil.rmtree(ct_dir, ignore_errors=True)
        write_study(
            StudySpec(region="chest", slices=slices, nodules=2, seed=1, rows=size, columns=size),
            ct_dir,
        )
    ct_files = sorted(ct_dir.glob("IM*.dcm"))
    warm_dir = work / "ct-warm"
    if not (warm_dir / "truth.json").is_file():
        write_study(
            StudySpec(region="chest", slices=8, nodules=1, seed=2, rows=size, columns=size),
            warm_dir,
        )
    xr = write_radiographs(work / f"cr-{radiographs}x{xr_size}", radiographs, xr_size)
    warm_xr = write_radiographs(work / "cr-warm", 1, xr_size)
    rows = []
    for kind, sets in (("ct", CT_SETS), ("xr", XR_SETS)):
        for names in sets:
            _activate_only(registry, names, ["region"] if kind == "ct" else [])
            data = Path(tempfile.mkdtemp(dir=work, prefix="node-"))
            node = build_node(Settings(data_dir=data, fsync=False, models_dir=registry.root))
            try:
                pipeline = AnalysisPipeline(node, ModelSet(registry))
                pipeline.warm_up()
                _ingest(node, sorted(warm_dir.glob("IM*.dcm")) if kind == "ct" else [warm_xr[0][1]])
                _run_jobs(node, pipeline)  # the first study: models loaded and traced
                if kind == "ct":
                    _ingest(node, ct_files)
                    units, label = slices, "slices"
                else:
                    for _, path in xr:
                        _ingest(node, [path])
                    units, label = radiographs, "images"
                seconds, outcomes = _run_jobs(node, pipeline)
                statuses = sorted(
                    {m["status"] for o in outcomes for m in o.get("models", {}).values()}
                )
                rows.append(
                    {
                        "input": f"{slices}-slice {size}x{size} CT"
                        if kind == "ct"
                        else f"{radiographs} radiographs {xr_size}x{xr_size} (one per study)",
                        "models": list(names),
                        "seconds": round(seconds, 2),
                        "rate": round(units / seconds, 1),
                        "unit": f"{label}/s",
                        "studies": len(outcomes),
                        "statuses": statuses,
                    }
                )
                print(f"  {kind} {'+'.join(names)}: {seconds:.2f} s", file=sys.stderr)
            finally:
                node.close()
                shutil.rmtree(data, ignore_errors=True)
    return rows


def densenet_rate(registry: Any, images: int, batch: int) -> dict[str, Any]:
    """DenseNet121's batched inference rate on random 224x224x3 inputs (after a warm batch)."""
    import numpy as np

    model = registry.load("cxr-densenet", registry.versions("cxr-densenet")[-1])
    x = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
    model.predict_batched(x, batch)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        done = 0
        while done < images:
            model.predict_batched(x, batch)
            done += batch
        times.append(done / (time.perf_counter() - started))
    return {"images_per_s": round(statistics.median(times), 1), "batch": batch, "images": images}


def memory_of(root: Path, name: str) -> dict[str, Any]:
    """In this (fresh) process: the resident memory one model adds once loaded and traced,
    over a baseline with TensorFlow imported and initialised."""
    import numpy as np
    import tensorflow as tf

    from ai_node.registry import ModelRegistry

    tf.constant(1.0) + 1.0  # the runtime's own start-up, not the model's
    registry = ModelRegistry(root)
    version = registry.versions(name)[-1]
    card = registry.model_card(name, version)
    before = rss_mb()
    model = registry.load(name, version)
    size, channels = card.input.size[0], card.input.channels
    model.predict_batched(np.zeros((2, size, size, channels), np.float32))
    after = rss_mb()
    return {
        "model": name,
        "params": int(model.keras_model.count_params()),
        "file_mb": round(registry.model_path(name, version).stat().st_size / 2**20, 1),
        "rss_mb": round(after - before, 1),
    }


def memory(root: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`memory_of` each model, each in a process of its own."""
    import subprocess

    out = []
    for name in names:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.models",
                "--memory-of",
                name,
                "--registry",
                str(root),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def environment() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
        "device": ", ".join(gpus) if gpus else "CPU",
        "machine": platform.machine(),
    }


def report(env: dict[str, Any], rows: list[dict], dense: dict | None, mem: list[dict]) -> str:
    lines = [
        f"Environment: {env['device']}, {env['cpus']} CPUs, Python {env['python']}, "
        f"TensorFlow {env['tensorflow']}, Keras {env['keras']}.",
        "",
        "| input | active models | time (s) | throughput | result rows |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['input']} | {' + '.join(r['models'])} | {r['seconds']:.2f} | "
            f"{r['rate']} {r['unit']} | {', '.join(r['statuses'])} |"
        )
    if dense is not None:
        lines += [
            "",
            f"DenseNet121 (224x224x3), batches of {dense['batch']}: "
            f"{dense['images_per_s']} images/s.",
        ]
    lines += [
        "",
        "| model | parameters | file (MiB) | resident memory added (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for m in mem:
        lines.append(f"| {m['model']} | {m['params']:,} | {m['file_mb']} | {m['rss_mb']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="CT rows = columns")
    parser.add_argument("--radiographs", type=int, default=50)
    parser.add_argument("--xr-size", type=int, default=2048, help="radiograph rows = columns")
    parser.add_argument("--densenet-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="DenseNet121 batch")
    parser.add_argument("--work-dir", type=Path, default=Path("bench-work") / "models")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--registry", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        print(json.dumps(memory_of(args.registry, args.memory_of)))
        return 0

    from ai_node.package import import_package
    from ai_node.registry import SHIPPED_MODELS, ModelRegistry

    args.work_dir.mkdir(parents=True, exist_ok=True)
    root = args.work_dir / "registry"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__", ".lock"))
    registry = ModelRegistry(root)
    names = ["proto-ct", "ct-3window", "cxr-densenet", "cxr-small", "cxr-small-b"]
    print("building and importing the models ...", file=sys.stderr)
    for name, (model, card) in build_models(names).items():
        folder = package(args.work_dir / "packages" / name, model, card)
        import_package(registry, folder)
        shutil.rmtree(folder, ignore_errors=True)
    env = environment()
    mem = memory(root, ["finding", "region", "chest-xray-opacity", *names])
    dense = densenet_rate(registry, args.densenet_images, args.batch)
    rows = throughput(
        args.work_dir, registry, args.slices, args.size, args.radiographs, args.xr_size
    )
    print(report(env, rows, dense, mem))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"environment": env, "throughput": rows, "densenet": dense, "memory": mem}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
