"""Running the retraining pipeline: on this machine with ``kfp.local``, or submitted to a
Kubeflow Pipelines installation.

Locally the pipeline runs with :class:`kfp.local.SubprocessRunner` (``use_venv=False``:
each step is a subprocess of this Python, so this checkout's code runs). kfp.local has no
progress callback; it logs ``Executing task '<name>'`` and ``Task '<name>' finished with
status ...`` on the root logger, which :class:`StepWatcher` (a logging filter) turns into
step states in the run record and in the caller's ``on_step``.

kfp.local writes everything to standard output: its own log, each step's output and each
task's inputs and outputs as JSON (hundreds of lines a run). A local run sends that, and
this process's log records and warnings while the pipeline runs, to
``<work_dir>/runs/<run_id>/kfp.log`` instead (:func:`output_to`); the same folder holds
the pipeline root (``pipeline/``) and copies of the evaluation report (``report.json``,
``report.html``). A failed step's error is its last ``...Error: message`` line there.

Secrets reach the steps in the environment (``RADNODE_RETRAINING_API_TOKEN``,
``RADNODE_RETRAINING_SALT``), never as pipeline parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ai_node.registry import ModelRegistry, RegistryError
from ai_node.retrain import STEPS
from ai_node.retrain.export import SALT_ENV, TOKEN_ENV
from ai_node.retrain.finetune import RetrainingRefused, check_retrainable
from ai_node.retrain.labels import RETRAINED_MODEL, newest_feedback_id
from ai_node.retrain.runs import RunStore
from radnode_core.audit import AuditTrail
from radnode_core.index import Index
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)

OnStep = Callable[[str, str], None]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '?([\w-]+)'?")
_FINISHED = re.compile(r"Task '?([\w-]+)'? finished with status (\w+)")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


class RetrainError(RuntimeError):
    """A run that cannot start (no writable registry) or that failed."""


def step_of(task_name: str) -> str | None:
    """Our step name of a kfp task name (``export-op`` -> ``export``)."""
    name = task_name.removesuffix("-op")
    return name if name in STEPS else None


class StepWatcher(logging.Filter):
    """Root-logger filter that reports kfp.local's task start / finish lines."""

    def __init__(self, on_step: OnStep) -> None:
        super().__init__()
        self.on_step = on_step

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = _ANSI.sub("", record.getMessage())
        except Exception:  # noqa: BLE001 - a log line that cannot format is not ours
            return True
        if (m := _FINISHED.search(message)) and (step := step_of(m.group(1))):
            self.on_step(step, "succeeded" if m.group(2).upper() == "SUCCESS" else "failed")
        elif (m := _STARTED.search(message)) and (step := step_of(m.group(1))):
            self.on_step(step, "running")
        return True


def api_url(settings: Settings) -> str:
    if settings.retraining_api_url:
        return settings.retraining_api_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.http_port}"


def work_dir(settings: Settings) -> Path:
    return settings.retraining_work_dir or settings.data_dir / "retraining"


def salt(settings: Settings) -> str:
    """The configured salt, else the node's own (created once, readable by the owner only)."""
    if settings.retraining_salt is not None:
        return settings.retraining_salt.get_secret_value()
    path = work_dir(settings) / "salt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def models_dir(settings: Settings, model: str = RETRAINED_MODEL) -> Path:
    """The writable registry, once ``model`` is found retrainable there."""
    if settings.models_dir is None:
        raise RetrainError(
            "retraining writes new model versions: set models_dir (RADNODE_MODELS_DIR) to a "
            "writable registry, e.g. a copy of ai_node/models (the shipped models stay "
            "read-only)"
        )
    root = settings.models_dir.resolve()
    check_trainable(ModelRegistry(root), model, settings.retraining_from_scratch)
    return root


def check_trainable(registry: ModelRegistry, name: str, from_scratch: bool = False) -> None:
    """Refuse a model that is not in the registry, has no active version, or whose active
    version cannot be retrained (:func:`ai_node.retrain.finetune.check_retrainable`: its
    card says ``trainable: false``, it is not binary, its code was trusted, a SavedModel)."""
    try:
        check_retrainable(registry, name, from_scratch)
    except (RetrainingRefused, RegistryError) as exc:
        raise RetrainError(str(exc)) from exc


def pipeline_arguments(
    settings: Settings,
    run_id: str,
    version: str = "",
    epochs: int | None = None,
    in_cluster: bool = False,
    model: str = RETRAINED_MODEL,
) -> dict[str, Any]:
    """The pipeline's parameters from the node's settings. ``in_cluster`` (a KFP run):
    the API URL and the registry folder only when set, else the pipeline's in-cluster
    defaults (the radnode-api Service, /data/models)."""
    arguments: dict[str, Any] = {
        "model": model,
        "dicomweb_url": settings.retraining_dicomweb_url or "",
        "epochs": epochs or settings.retraining_epochs,
        "from_scratch": settings.retraining_from_scratch,
        "seed": 1,
        "val_fraction": settings.retraining_val_fraction,
        "test_fraction": settings.retraining_test_fraction,
        "min_labels": settings.retraining_min_labels,
        "min_test_positives": settings.retraining_min_test_positives,
        "min_test_negatives": settings.retraining_min_test_negatives,
        "threshold": settings.finding_threshold,
        "prevalence": settings.retraining_prevalence,
        "bootstrap_samples": settings.retraining_bootstrap_samples,
        "sensitivity_margin": settings.retraining_sensitivity_margin,
        "specificity_margin": settings.retraining_specificity_margin,
        "brier_margin": settings.retraining_brier_margin,
        "auc_margin": settings.retraining_auc_margin,
        "version": version,
        "run_id": run_id,
    }
    if not in_cluster:
        arguments["api_url"] = api_url(settings)
        arguments["models_dir"] = str(models_dir(settings, model))
    else:
        if settings.retraining_api_url:
            arguments["api_url"] = settings.retraining_api_url
        if settings.models_dir is not None:
            arguments["models_dir"] = str(settings.models_dir)
    return arguments


def step_environment(settings: Settings) -> dict[str, str]:
    env = {SALT_ENV: salt(settings)}
    if settings.retraining_api_token is not None:
        env[TOKEN_ENV] = settings.retraining_api_token.get_secret_value()
    return env


@dataclass
class RunOutcome:
    run_id: str
    status: str
    decision: dict[str, Any] | None
    error: str | None
    files: dict[str, str] = field(default_factory=dict)
    """``log`` (kfp.local's output), ``report_json`` and ``report_html`` when written."""


def run_dir(settings: Settings, run_id: str) -> Path:
    """The folder of one local run's files (module docstring)."""
    return work_dir(settings) / "runs" / run_id


def step_error(log_text: str) -> str | None:
    """The last ``...Error: message`` line of a step's traceback in kfp.local's log."""
    found = None
    for line in log_text.splitlines():
        if m := _ERROR_LINE.match(_ANSI.sub("", line)):
            found = f"{m.group(1)}: {m.group(2).strip()}"
    return found


@contextlib.contextmanager
def output_to(log: TextIO) -> Iterator[None]:
    """Standard output, the root logger's records and warnings go to ``log`` meanwhile."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s"))
    root.handlers = [handler]
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stdout(log):
            yield
    finally:
        logging.captureWarnings(False)
        root.handlers = handlers


def _keep_reports(pipeline_root: Path, folder: Path) -> dict[str, str]:
    """Copy the evaluation report (JSON) and its HTML page out of the pipeline root."""
    files = {}
    for artifact, name, key in (
        ("evaluate-op/report", "report.json", "report_json"),
        ("promote-op/report_html", "report.html", "report_html"),
    ):
        found = sorted(pipeline_root.glob(f"*/{artifact}"))
        if found and found[-1].is_file():
            shutil.copyfile(found[-1], folder / name)
            files[key] = str(folder / name)
    return files


def run_local(
    settings: Settings,
    index: Index,
    trigger: str = "manual",
    version: str = "",
    epochs: int | None = None,
    on_step: OnStep | None = None,
    model: str = RETRAINED_MODEL,
) -> RunOutcome:
    """Run the whole pipeline here with kfp.local for ``model``; the run is recorded from
    start to end."""
    # kfp takes half a second to import: only the pipeline commands pay for it.
    from kfp import local

    from ai_node.retrain.pipeline import retrain_pipeline

    runs = RunStore(index)
    arguments_models = models_dir(settings, model)  # refuse before recording anything
    run_id = runs.create(trigger, labels_upto=newest_feedback_id(index, model), model=model)
    arguments = pipeline_arguments(settings, run_id, version, epochs, model=model)
    folder = run_dir(settings, run_id)
    root = folder / "pipeline"
    root.mkdir(parents=True, exist_ok=True)
    log_path = folder / "kfp.log"
    os.environ.update(step_environment(settings))
    # the steps run in child processes: give them radnode's packages from where this one
    # was loaded (a checkout or site-packages)
    source_root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (source_root, os.environ.get("PYTHONPATH", "")) if p
    )

    def step(name: str, state: str) -> None:
        runs.set_step(run_id, name, state)
        if on_step is not None:
            on_step(name, state)

    watcher = StepWatcher(step)
    root_logger = logging.getLogger()
    root_logger.addFilter(watcher)
    logger.info(
        "retraining run started", extra={"run_id": run_id, "trigger": trigger, "model": model}
    )
    artifacts = {"run_dir": str(folder), "pipeline_root": str(root), "log": str(log_path)}
    artifacts["models_dir"] = str(arguments_models)
    try:
        with log_path.open("w") as log, output_to(log):
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
            task = retrain_pipeline(**arguments)
        decision = json.loads(task.output)
    except Exception as exc:  # noqa: BLE001 - recorded with the run, then reported
        cause = step_error(log_path.read_text(errors="replace")) if log_path.is_file() else None
        error = (cause or f"{type(exc).__name__}: {exc}")[:4000]
        artifacts.update(_keep_reports(root, folder))
        runs.update(run_id, status="failed", error=error, artifacts=artifacts)
        logger.error("retraining run failed", extra={"run_id": run_id, "error": error})
        return RunOutcome(run_id, "failed", None, error, _files(artifacts))
    finally:
        root_logger.removeFilter(watcher)
    artifacts.update(_keep_reports(root, folder))
    runs.update(
        run_id,
        status="succeeded",
        candidate_version=decision["version"],
        decision=decision["decision"],
        reason=decision["reason"],
        metrics={
            **decision["metrics"],
            "auc_difference": decision["auc_difference"],
            "operating_points": decision["operating_points"],
            "prevalence": decision["prevalence"],
            "test_studies": decision["test_studies"],
            "test_positives": decision["test_positives"],
            "rule": decision["rule"],
            "checks": decision["checks"],
        },
        artifacts=artifacts,
    )
    logger.info(
        "retraining run finished",
        extra={"run_id": run_id, "decision": decision["decision"], "version": decision["version"]},
    )
    _audit_candidate(settings, run_id, trigger, decision, model)
    return RunOutcome(run_id, "succeeded", decision, None, _files(artifacts))


def _audit_candidate(
    settings: Settings,
    run_id: str,
    trigger: str,
    decision: dict[str, Any],
    model: str = RETRAINED_MODEL,
) -> None:
    """The candidate's registration, and its activation when promoted, as software
    configuration changes in the node's audit trail (as ``radnode model import`` and
    ``activate`` are): what runs on patients' studies changed."""
    trail = AuditTrail.from_settings(settings, None)
    user = f"radnode-retraining ({trigger})"
    version = str(decision["version"])
    model = str(decision.get("model") or model)
    try:
        trail.model_changed(
            action="import",
            model=model,
            version=version,
            user=user,
            detail=f"candidate of retraining run {run_id}",
        )
        if decision["decision"] == "promoted":
            trail.model_changed(
                action="activate",
                model=model,
                version=version,
                user=user,
                detail=f"promoted by retraining run {run_id}: {decision['reason']}"[:900],
            )
    finally:
        trail.close()


def _files(artifacts: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in artifacts.items() if k in ("log", "report_json", "report_html")}


def submit(
    settings: Settings,
    index: Index,
    host: str,
    trigger: str = "manual",
    model: str = RETRAINED_MODEL,
) -> str:
    """Submit the same pipeline for ``model`` to KFP at ``host``; returns the KFP run id.
    With a registry here (``models_dir``), a model it finds not retrainable is refused
    before anything is recorded."""
    # kfp takes half a second to import: only the pipeline commands pay for it.
    import kfp

    from ai_node.retrain.pipeline import PIPELINE_NAME, retrain_pipeline

    if settings.models_dir is not None:
        check_trainable(
            ModelRegistry(settings.models_dir), model, settings.retraining_from_scratch
        )
    runs = RunStore(index)
    run_id = runs.create(
        trigger, labels_upto=newest_feedback_id(index, model), status="submitted", model=model
    )
    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_func(
        retrain_pipeline,
        arguments=pipeline_arguments(settings, run_id, in_cluster=True, model=model),
        run_name=run_id,
        experiment_name=PIPELINE_NAME,
        namespace=kfp_namespace(),
        enable_caching=False,
    )
    runs.update(run_id, kfp_run_id=str(result.run_id))
    return str(result.run_id)


KFP_NAMESPACE_ENV = "KFP_NAMESPACE"
"""Multi-user Kubeflow: the profile namespace the runs go to (k8s: ``radnode``, where the
Secret and the shared volume are); unset for a standalone (single-user) KFP."""


def kfp_namespace() -> str | None:
    return os.environ.get(KFP_NAMESPACE_ENV) or None


def kfp_cron(schedule: str) -> str:
    """KFP's cron has a seconds field first (6 fields); a 5-field cron gets ``0`` prepended."""
    fields = schedule.split()
    if len(fields) == 5:
        return "0 " + schedule.strip()
    if len(fields) == 6:
        return schedule.strip()
    raise ValueError(f"a cron expression has 5 (or KFP's 6) fields: {schedule!r}")


def upload(
    settings: Settings,
    host: str,
    package: Path,
    schedule: str | None = None,
    model: str = RETRAINED_MODEL,
) -> dict[str, str]:
    """Register the compiled pipeline in KFP (a new version when it exists) and, with
    ``schedule``, create a recurring run of it for ``model`` with the node's settings as
    parameters (replacing the one an earlier upload made for that model)."""
    # kfp takes half a second to import: only the pipeline commands pay for it.
    import kfp

    from ai_node.retrain.pipeline import PIPELINE_NAME

    client = kfp.Client(host=host)
    stamp = os.environ.get("RADNODE_PIPELINE_VERSION") or _stamp()
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME)
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
        version_id = versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(
            str(package), pipeline_version_name=f"{PIPELINE_NAME}-{stamp}", pipeline_id=pipeline_id
        )
        version_id = version.pipeline_version_id
    out = {"pipeline_id": str(pipeline_id), "version_id": str(version_id)}
    if schedule:
        experiment = client.create_experiment(PIPELINE_NAME, namespace=kfp_namespace())
        job_name = (
            f"{PIPELINE_NAME}-schedule"
            if model == RETRAINED_MODEL
            else f"{PIPELINE_NAME}-{model}-schedule"
        )
        # idempotent: a re-run of the upload Job replaces the schedule instead of adding one
        existing = (
            client.list_recurring_runs(
                experiment_id=experiment.experiment_id, page_size=100
            ).recurring_runs
            or []
        )
        for old in existing:
            if old.display_name == job_name:
                client.delete_recurring_run(old.recurring_run_id)
        arguments = pipeline_arguments(settings, run_id="", in_cluster=True, model=model)
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=job_name,
            cron_expression=kfp_cron(schedule),
            pipeline_id=pipeline_id,
            version_id=version_id,
            params=arguments,
            max_concurrency=1,
            no_catchup=True,
            enable_caching=False,
        )
        out["recurring_run_id"] = str(job.recurring_run_id)
    return out


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def retrain_command(trigger: str, model: str = RETRAINED_MODEL) -> list[str]:
    """The command line the label-count trigger starts (this Python, this checkout)."""
    command = [sys.executable, "-m", "radnode.cli", "retrain"]
    if model != RETRAINED_MODEL:
        command += ["--model", model]
    return [*command, "--trigger", trigger]
