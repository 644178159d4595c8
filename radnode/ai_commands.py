"""``radnode`` subcommands of the AI node: model packages and the registry, training,
retraining.

    radnode model validate PACKAGE       check a model package (card, sha256, safe load, a run)
    radnode model import PACKAGE         check it and add it to the registry (--trust-code,
                                         --activate); audited
    radnode model list                   every model version: name, version, active, task,
                                         modalities
    radnode model activate NAME[:VERSION]  make a version active (default: the newest;
                                         workers reload); audited
    radnode model deactivate NAME        no version of NAME runs any more; audited
    radnode model train --synthetic      train the CT models, evaluate, save a new version
    radnode model train --synthetic --kind xray   train the chest X-ray opacity model
    radnode retrain                      run the retraining pipeline here (kfp.local)
    radnode retrain --model NAME         retrain another trainable model from its own labels
    radnode retrain --kfp-host URL       submit it to Kubeflow Pipelines
    radnode pipeline compile --output P  write the pipeline's KFP v2 YAML
    radnode pipeline upload --kfp-host URL [--schedule CRON]   register it (+ recurring run)
    radnode results requeue --status failed [--since DATE] [--model TASK] [--model-version V]
                                         run the selected studies through the analysis again

Nothing heavy is imported at parse time: TensorFlow loads inside the commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from ai_node.package import PackageError, import_package, validate_package
from ai_node.registry import ModelRegistry, RegistryError, check_version
from ai_node.requeue import Selection, requeue
from ai_node.results import STATUSES
from ai_node.retrain.local import RetrainError, run_local, submit, upload
from ai_node.retrain.runs import RunStore
from ai_node.train import default_version, train_and_save
from radnode_core.audit import MINOR_FAILURE, SUCCESS, AuditTrail
from radnode_core.index import Index
from radnode_core.node import Node

NodeOptions = Callable[[argparse.ArgumentParser], None]


def _registry(args: argparse.Namespace) -> Any:
    root = args.models_dir or getattr(getattr(args, "settings", None), "models_dir", None)
    return ModelRegistry(root)


def _writable_registry(args: argparse.Namespace, command: str) -> ModelRegistry | None:
    """The registry to change; None (after saying why) when it is the shipped models."""
    registry = _registry(args)
    if registry.is_shipped:
        print(
            f"radnode model {command}: the registry is the models shipped with radnode; set "
            "models_dir (RADNODE_MODELS_DIR) or --models-dir to a registry folder of your own "
            "(seed it with `python -m ai_node.registry seed --models-dir DIR`)",
            file=sys.stderr,
        )
        return None
    return registry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _audit(args: argparse.Namespace, **event: Any) -> None:
    """One model change in the node's audit trail (radnode_core.audit: Security Alert,
    Software Configuration)."""
    settings = getattr(args, "settings", None)
    if settings is None:
        return
    trail = AuditTrail.from_settings(settings, None)
    try:
        trail.model_changed(user=_user(), **event)
    finally:
        trail.close()


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
    table = Table(title=f"model registry: {registry.root}")
    for column in ("name", "version", "active", "task", "modalities", "date", "trust code"):
        table.add_column(column)
    for item in registry.describe():
        table.add_row(
            item["name"],
            item["version"],
            "*" if item["active"] else "",
            str(item["task"] or ""),
            ", ".join(item["modalities"]),
            str(item["date"] or ""),
            "yes" if item["trust_code"] else "",
        )
    Console(width=160).print(table)
    return 0


def cmd_model_validate(args: argparse.Namespace) -> int:
    try:
        report = validate_package(args.package, trust_code=args.trust_code)
    except PackageError as exc:
        print(f"radnode model validate: refused: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print(f"{report.card.key}: valid")
    return 0


def cmd_model_import(args: argparse.Namespace) -> int:
    registry = _writable_registry(args, "import")
    if registry is None:
        return 2
    try:
        result = import_package(
            registry,
            args.package,
            trust_code=args.trust_code,
            activate=args.activate,
            user=_user(),
        )
    except (PackageError, RegistryError) as exc:
        _audit(
            args,
            action="import refused",
            model=str(args.package.name),
            version=None,
            detail=str(exc)[:900],
            outcome=MINOR_FAILURE,
        )
        print(f"radnode model import: refused: {exc}", file=sys.stderr)
        print("the registry is unchanged", file=sys.stderr)
        return 1
    card = result.report.card
    for line in result.report.lines():
        print(line)
    if result.unchanged:
        print(f"{card.key} is already in the registry with the same bytes: unchanged")
    else:
        detail = f"sha256={result.report.sha256} trust_code={str(args.trust_code).lower()}"
        _audit(args, action="import", model=card.name, version=card.version, detail=detail)
        print(f"imported {card.key} into {result.folder}")
    if args.activate:
        _audit(args, action="activate", model=card.name, version=card.version, outcome=SUCCESS)
        print(f"{card.name}: active version is now {card.version} (running workers reload it)")
    return 0


def _name_version(text: str, version: str | None) -> tuple[str, str | None]:
    name, _, tail = text.partition(":")
    return name, (tail or version or None)


def cmd_model_activate(args: argparse.Namespace) -> int:
    registry = _writable_registry(args, "activate")
    if registry is None:
        return 2
    name, version = _name_version(args.model, args.version)
    try:
        versions = registry.versions(name)
        if not versions:
            raise RegistryError(f"no model {name!r} in {registry.root}")
        version = version or versions[-1]
        registry.activate(name, version)
    except RegistryError as exc:
        print(f"radnode model activate: {exc}", file=sys.stderr)
        return 1
    _audit(args, action="activate", model=name, version=version)
    print(f"{name}: active version is now {version} (running workers reload it)")
    return 0


def cmd_model_deactivate(args: argparse.Namespace) -> int:
    registry = _writable_registry(args, "deactivate")
    if registry is None:
        return 2
    try:
        before = registry.deactivate(args.name)
    except RegistryError as exc:
        print(f"radnode model deactivate: {exc}", file=sys.stderr)
        return 1
    _audit(args, action="deactivate", model=args.name, version=before)
    print(f"{args.name}: no version is active (was {before or 'none'}); workers stop running it")
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
            run_id = submit(settings, index, args.kfp_host, trigger=args.trigger, model=args.model)
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
            model=args.model,
        )
    except RetrainError as exc:
        print(f"radnode retrain: {exc}", file=sys.stderr)
        return 2
    finally:
        index.close()
    if outcome.decision is None:
        print(f"run {outcome.run_id} failed: {outcome.error}", file=sys.stderr)
        if "log" in outcome.files:
            print(f"KFP log: {outcome.files['log']}", file=sys.stderr)
        return 1
    print_summary(outcome.run_id, outcome.decision, outcome.files)
    return 0


def _cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    ci = (metrics.get("ci") or {}).get(key)
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def print_summary(run_id: str, d: dict[str, Any], files: dict[str, str]) -> None:
    """The decision, both models' test-split numbers with 95% intervals, and the files."""
    cand, act = d["metrics"]["candidate"], d["metrics"]["active"]
    ops = d["operating_points"]
    prevalence = d["prevalence"]
    print(f"test split: {d['test_studies']} studies, {d['test_positives']} labelled positive")
    print(f"{'':18} {'candidate':28} active")
    print(
        f"{'threshold':18} {ops['candidate']['threshold']:<8.4g} "
        f"{'(' + ops['candidate']['chosen_on'] + ')':19} "
        f"{ops['active']['threshold']:.4g} ({ops['active']['chosen_on']})"
    )
    for key, label in (
        ("auc", "AUC"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("ppv", f"PPV @ {prevalence:g}"),
        ("npv", f"NPV @ {prevalence:g}"),
        ("brier", "Brier"),
        ("ece", "ECE"),
    ):
        print(f"{label:18} {_cell(cand, key):28} {_cell(act, key)}")
    diff = d["auc_difference"]
    ci = diff.get("ci")
    interval = f" (95% interval {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
    print(f"AUC difference     {diff['estimate']:+.3f}{interval}")
    model = d.get("model", "finding")
    print(f"run {run_id}: {model} {d['version']} {d['decision']}: {d['reason']}")
    for key, label in (("report_html", "report"), ("log", "KFP log")):
        if key in files:
            print(f"{label}: {files[key]}")


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
            ids = upload(_settings_with(args), args.kfp_host, package, args.schedule, args.model)
        except ValueError as exc:
            print(f"radnode pipeline upload: {exc}", file=sys.stderr)
            return 2
    for key, value in ids.items():
        print(f"{key}: {value}")
    return 0


def _since(value: str) -> dt.datetime:
    """``--since``: a date (midnight UTC) or an ISO date-time (UTC when it has no offset)."""
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date or ISO date-time: {value!r}") from exc


def cmd_results_requeue(args: argparse.Namespace) -> int:
    """Run the selected studies through the analysis again (ai_node.requeue)."""
    try:
        selection = Selection(args.status, args.since, args.model, args.model_version)
    except ValueError as exc:
        print(f"radnode results requeue: {exc}", file=sys.stderr)
        return 2
    node = Node(args.settings)
    try:
        outcome = requeue(
            node.index,
            node.queue,
            node.audit,
            selection,
            user=f"cli:{getpass.getuser()}",
            dry_run=args.dry_run,
        )
    finally:
        node.close(clean=False)
    if args.dry_run:
        print(f"{len(outcome.selected)} studies match ({selection.describe()}):")
        for uid in outcome.selected:
            print(f"  {uid}")
        return 0
    for job in outcome.requeued:
        print(f"  {job.study_uid}: job {job.id}, version {job.version}")
    print(
        f"requeued {len(outcome.requeued)} of {len(outcome.selected)} matching studies "
        f"({selection.describe()})"
    )
    if outcome.skipped:
        print(f"skipped {len(outcome.skipped)}: a job is already queued or running")
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

    lst = model_sub.add_parser("list", help="every model version (* = active)")
    registry_option(lst)
    node_options(lst)
    lst.set_defaults(func=cmd_model_list)

    val = model_sub.add_parser(
        "validate", help="check a model package (folder or .zip) without importing it"
    )
    val.add_argument("package", type=Path)
    val.add_argument(
        "--trust-code",
        action="store_true",
        help="allow Lambda / custom layers, custom_objects.py and SavedModels (runs their code)",
    )
    val.set_defaults(func=cmd_model_validate)

    imp = model_sub.add_parser("import", help="check a model package and add it to the registry")
    registry_option(imp)
    node_options(imp)
    imp.add_argument("package", type=Path, help="a folder with model.yaml, or a .zip of one")
    imp.add_argument(
        "--trust-code",
        action="store_true",
        help="allow Lambda / custom layers, custom_objects.py and SavedModels (runs their "
        "code; recorded in the registry entry)",
    )
    imp.add_argument("--activate", action="store_true", help="make it the active version")
    imp.set_defaults(func=cmd_model_import)

    act = model_sub.add_parser("activate", help="make a version the active one")
    registry_option(act)
    node_options(act)
    act.add_argument("model", metavar="NAME[:VERSION]", help="default version: the newest")
    act.add_argument("version", nargs="?", help=argparse.SUPPRESS)
    act.set_defaults(func=cmd_model_activate)

    deact = model_sub.add_parser("deactivate", help="stop running a model (no version active)")
    registry_option(deact)
    node_options(deact)
    deact.add_argument("name")
    deact.set_defaults(func=cmd_model_deactivate)

    retrain = sub.add_parser(
        "retrain",
        help="retraining pipeline: labels -> de-identified data -> train -> evaluate -> promote",
    )
    registry_option(retrain)
    node_options(retrain)
    retrain.add_argument(
        "--model",
        default="finding",
        help="the model to retrain, from its own labels (its card: trainable: true; "
        "default finding)",
    )
    retrain.add_argument("--kfp-host", help="submit to this Kubeflow Pipelines host instead")
    retrain.add_argument("--epochs", type=int, help="override retraining_epochs")
    retrain.add_argument("--from-scratch", action="store_true", help="do not fine-tune")
    retrain.add_argument("--version", help="name of the new version (default retrain-<UTC>)")
    retrain.add_argument(
        "--trigger", choices=["manual", "labels"], default="manual", help=argparse.SUPPRESS
    )
    retrain.set_defaults(func=cmd_retrain)

    results = sub.add_parser("results", help="AI results: run studies through the analysis again")
    results_sub = results.add_subparsers(dest="results_command", required=True, metavar="ACTION")
    rq = results_sub.add_parser(
        "requeue",
        help="one new analysis of each study whose newest result matches (audited)",
        description="Select studies by their newest AI result and queue one new analysis of "
        "each (a new study version: a new result and SR). At least --status or "
        "--model-version.",
    )
    node_options(rq)
    rq.add_argument("--status", choices=STATUSES, help="e.g. failed")
    rq.add_argument(
        "--since", type=_since, help="results finished at or after YYYY-MM-DD[THH:MM] (UTC)"
    )
    rq.add_argument("--model", help="the model named (default finding)")
    rq.add_argument(
        "--model-version", help="results of this version of the model (e.g. the replaced one)"
    )
    rq.add_argument("--dry-run", action="store_true", help="list the matching studies only")
    rq.set_defaults(func=cmd_results_requeue)

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
    up.add_argument(
        "--model", default="finding", help="the model the recurring run retrains (default finding)"
    )
    up.set_defaults(func=cmd_pipeline_upload, from_scratch=False)
