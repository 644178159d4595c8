"""``radnode`` subcommands of the AI node: model training and registry, retraining.

    radnode model train --synthetic      train both CT models, evaluate, save a new version
    radnode model train --synthetic --kind xray   train the chest X-ray opacity model
    radnode model list                   versions per task, the active one marked
    radnode model activate TASK VERSION  switch the active version (workers reload)
    radnode retrain                      run the retraining pipeline here (kfp.local)
    radnode retrain --kfp-host URL       submit it to Kubeflow Pipelines
    radnode pipeline compile --output P  write the pipeline's KFP v2 YAML
    radnode pipeline upload --kfp-host URL [--schedule CRON]   register it (+ recurring run)

Nothing heavy is imported at parse time: TensorFlow loads inside the commands.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from ai_node.models import TASKS
from ai_node.registry import ModelRegistry, RegistryError, check_version
from ai_node.retrain.local import RetrainError, run_local, submit, upload
from ai_node.retrain.runs import RunStore
from ai_node.train import default_version, train_and_save
from radnode_core.index import Index

NodeOptions = Callable[[argparse.ArgumentParser], None]


def _registry(args: argparse.Namespace) -> Any:
    root = args.models_dir or getattr(getattr(args, "settings", None), "models_dir", None)
    return ModelRegistry(root)


def _progress_bar() -> tuple[Any, Callable[[str, int, int], None]]:
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not sys.stderr.isatty(),
    )
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done)

    return progress, update


def cmd_model_train(args: argparse.Namespace) -> int:
    if args.kind == "xray":
        return _train_xray(args)
    if not args.synthetic and args.dicom_dir is None:
        print("radnode model train: give --synthetic or --dicom-dir", file=sys.stderr)
        return 2
    registry = _registry(args)
    version = check_version(args.version or default_version())
    progress, update = _progress_bar()
    with progress:
        run = train_and_save(
            registry,
            version,
            synthetic=args.synthetic,
            dicom_dir=args.dicom_dir,
            labels_csv=args.labels,
            label_column=args.label_column,
            region_epochs=args.region_epochs,
            finding_epochs=args.finding_epochs,
            seed=args.seed,
            verbose=1 if sys.stdout.isatty() else 2,
            progress=update,
        )
    table = Table(title=f"held-out metrics, version {version}")
    table.add_column("model")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if run.metrics is not None:
        m = run.metrics
        table.add_row(
            "region", f"accuracy ({m.region_studies} studies)", f"{m.region_accuracy:.3f}"
        )
        table.add_row("finding", f"AUC ({m.finding_studies} chest studies)", f"{m.finding_auc:.3f}")
        table.add_row("finding", f"sensitivity @ {m.threshold}", f"{m.finding_sensitivity:.3f}")
        table.add_row("finding", f"specificity @ {m.threshold}", f"{m.finding_specificity:.3f}")
    Console().print(table)
    for task, path in run.paths.items():
        print(f"saved {task} {version} to {path}")
    if args.activate:
        for task in run.paths:
            registry.activate(task, version)
        print(f"activated {version}")
    return 0


def _train_xray(args: argparse.Namespace) -> int:
    """The chest X-ray opacity model: synthetic radiographs only; a package in the
    registry folder (``<models dir>/chest-xray-opacity/<version>/``)."""
    # The X-ray trainer imports the radiograph generator; only this command pays for it.
    from ai_node.xray_train import MODEL_NAME, train_and_save_xray

    if not args.synthetic or args.dicom_dir is not None:
        print("radnode model train --kind xray: only --synthetic is supported", file=sys.stderr)
        return 2
    version = check_version(args.version or default_version())
    root = _registry(args).root
    if (root / MODEL_NAME / version).exists():
        print(f"radnode model train: {MODEL_NAME} {version} already exists", file=sys.stderr)
        return 1
    progress, update = _progress_bar()
    with progress:
        run = train_and_save_xray(
            root,
            version,
            epochs=args.epochs or 10,
            seed=args.seed,
            verbose=1 if sys.stdout.isatty() else 2,
            activate=args.activate,
            progress=update,
        )
    table = Table(title=f"held-out metrics, {MODEL_NAME} {version}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if run.metrics is not None:
        m = run.metrics
        table.add_row(f"AUC ({m.images} images)", f"{m.auc:.4f}")
        table.add_row(f"sensitivity @ {m.threshold}", f"{m.sensitivity:.4f}")
        table.add_row(f"specificity @ {m.threshold}", f"{m.specificity:.4f}")
    Console().print(table)
    print(f"trained in {run.wall_s:.0f} s; saved {MODEL_NAME} {version} to {run.path}")
    if args.activate:
        print(f"activated {version}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    print(f"registry: {registry.root}")
    for task in TASKS:
        try:
            active = registry.active_version(task)
        except RegistryError:
            active = None
        for version in registry.versions(task):
            card = registry.card(task, version)
            metrics = {k: v for k, v in card.get("metrics", {}).items() if isinstance(v, float)}
            mark = "*" if version == active else " "
            shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            print(f"{mark} {task:8} {version:24} {card.get('date', ''):10} {shown}")
    return 0


def cmd_model_activate(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        registry.activate(args.task, args.version)
    except RegistryError as exc:
        print(f"radnode model activate: {exc}", file=sys.stderr)
        return 1
    print(f"{args.task}: active version is now {args.version} (running workers reload it)")
    return 0


def _settings_with(args: argparse.Namespace) -> Any:
    settings = args.settings
    updates = {}
    if getattr(args, "models_dir", None) is not None:
        updates["models_dir"] = args.models_dir
    if getattr(args, "from_scratch", False):
        updates["retraining_from_scratch"] = True
    return settings.model_copy(update=updates) if updates else settings


def cmd_retrain(args: argparse.Namespace) -> int:
    """Run the retraining pipeline here (kfp.local), or submit it to a KFP host."""

    settings = _settings_with(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = Index(settings.index_url)
    try:
        if args.kfp_host:
            run_id = submit(settings, index, args.kfp_host, trigger=args.trigger)
            print(f"submitted to {args.kfp_host}: KFP run {run_id}")
            return 0
        if args.trigger == "labels":
            if RunStore(index).running():
                print("radnode retrain: a run is already going on", file=sys.stderr)
                return 1
        order = {"export": 1, "preprocess": 2, "train": 3, "evaluate": 4, "promote": 5}

        def on_step(step: str, state: str) -> None:
            print(f"[{order[step]}/5] {step}: {state}", file=sys.stderr, flush=True)

        outcome = run_local(
            settings,
            index,
            trigger=args.trigger,
            version=args.version or "",
            epochs=args.epochs,
            on_step=on_step,
        )
    except RetrainError as exc:
        print(f"radnode retrain: {exc}", file=sys.stderr)
        return 2
    finally:
        index.close()
    if outcome.decision is None:
        print(f"run {outcome.run_id} failed: {outcome.error}", file=sys.stderr)
        return 1
    d = outcome.decision
    for who in ("candidate", "active"):
        m = d["metrics"][who]
        print(
            f"{who:9} AUC={m['auc']} sensitivity={m['sensitivity']} "
            f"specificity={m['specificity']} brier={m['brier']}"
        )
    print(f"run {outcome.run_id}: finding {d['version']} {d['decision']}: {d['reason']}")
    return 0


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    # kfp takes half a second to import: only the pipeline commands pay for it.
    from ai_node.retrain.pipeline import compile_pipeline

    print(f"wrote {compile_pipeline(args.output)}")
    return 0


def cmd_pipeline_upload(args: argparse.Namespace) -> int:
    """Register the pipeline in KFP and, with --schedule, a recurring run of it."""
    # kfp takes half a second to import: only the pipeline commands pay for it.
    from ai_node.retrain.pipeline import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or compile_pipeline(Path(tmp) / "retrain-pipeline.yaml")
        try:
            ids = upload(_settings_with(args), args.kfp_host, package, args.schedule)
        except ValueError as exc:
            print(f"radnode pipeline upload: {exc}", file=sys.stderr)
            return 2
    for key, value in ids.items():
        print(f"{key}: {value}")
    return 0


def register(sub: Any, node_options: NodeOptions) -> None:
    """Add the AI node's commands to the ``radnode`` parser (``sub``)."""
    model = sub.add_parser("model", help="train, list and activate the AI models")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    def registry_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--models-dir",
            type=Path,
            help="model registry (default: settings models_dir, else the shipped models)",
        )

    train = model_sub.add_parser(
        "train",
        help="train the CT region and finding models (or the chest X-ray model) "
        "and save a new version",
    )
    registry_option(train)
    node_options(train)
    train.add_argument(
        "--kind",
        choices=["ct", "xray"],
        default="ct",
        help="ct: the region and finding models (default); xray: the chest X-ray opacity model",
    )
    train.add_argument(
        "--synthetic", action="store_true", help="train on generated synthetic studies"
    )
    train.add_argument("--dicom-dir", type=Path, help="real data: a folder of labelled DICOM files")
    train.add_argument(
        "--labels", type=Path, help="CSV with file (or dicom_name) and a label column"
    )
    train.add_argument(
        "--label-column", default="label", help="0/1 label column of the CSV (default label)"
    )
    train.add_argument("--version", help="version name (default: UTC date-time)")
    train.add_argument("--region-epochs", type=int, default=4)
    train.add_argument("--finding-epochs", type=int, default=15)
    train.add_argument("--epochs", type=int, help="--kind xray: training epochs (default 10)")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--activate", action="store_true", help="make the new version active")
    train.set_defaults(func=cmd_model_train)

    lst = model_sub.add_parser("list", help="model versions per task (* = active)")
    registry_option(lst)
    node_options(lst)
    lst.set_defaults(func=cmd_model_list)

    act = model_sub.add_parser("activate", help="make a version the active one")
    registry_option(act)
    node_options(act)
    act.add_argument("task", choices=["region", "finding"])
    act.add_argument("version")
    act.set_defaults(func=cmd_model_activate)

    retrain = sub.add_parser(
        "retrain",
        help="retraining pipeline: labels -> de-identified data -> train -> evaluate -> promote",
    )
    registry_option(retrain)
    node_options(retrain)
    retrain.add_argument("--kfp-host", help="submit to this Kubeflow Pipelines host instead")
    retrain.add_argument("--epochs", type=int, help="override retraining_epochs")
    retrain.add_argument("--from-scratch", action="store_true", help="do not fine-tune")
    retrain.add_argument("--version", help="name of the new version (default retrain-<UTC>)")
    retrain.add_argument(
        "--trigger", choices=["manual", "labels"], default="manual", help=argparse.SUPPRESS
    )
    retrain.set_defaults(func=cmd_retrain)

    pipeline = sub.add_parser("pipeline", help="the retraining pipeline in Kubeflow Pipelines")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    comp = pipeline_sub.add_parser("compile", help="write the pipeline's KFP v2 YAML")
    comp.add_argument("--output", type=Path, required=True)
    comp.set_defaults(func=cmd_pipeline_compile)
    up = pipeline_sub.add_parser("upload", help="register the pipeline (and a recurring run)")
    registry_option(up)
    node_options(up)
    up.add_argument("--kfp-host", required=True, help="e.g. http://ml-pipeline.kubeflow:8888")
    up.add_argument("--schedule", help='cron, e.g. "0 2 * * 0" (5 fields, or KFP\'s 6)')
    up.add_argument("--package", type=Path, help="a compiled YAML (default: compile now)")
    up.set_defaults(func=cmd_pipeline_upload, from_scratch=False)
