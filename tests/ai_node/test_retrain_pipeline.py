"""The retraining pipeline's parts without a whole run: the compiled KFP v2 YAML, the
promotion rule, the registry's new versions, the label-count trigger, the step watcher."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from ai_node.registry import SHIPPED_MODELS, ModelRegistry
from ai_node.retrain import STEPS
from ai_node.retrain.components import IMAGE
from ai_node.retrain.local import StepWatcher, kfp_cron, retrain_command
from ai_node.retrain.pipeline import compile_pipeline
from ai_node.retrain.promote import PromotionRule
from ai_node.retrain.runs import RunStore
from ai_node.retrain.trigger import LabelTrigger
from ai_node.tables import feedback
from radnode.assembly import build_node
from radnode_core.index import studies
from radnode_core.node import Node
from radnode_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO / "k8s" / "pipelines" / "retrain-pipeline.yaml"
LOCK = REPO / "requirements.lock"
RECOMPILE = "`.venv/bin/radnode pipeline compile --output k8s/pipelines/retrain-pipeline.yaml`"


def _compiled_with(text: str) -> str | None:
    """The kfp version the compiler recorded in the YAML (``sdkVersion: kfp-X``)."""
    found = re.search(r"^sdkVersion: kfp-(\S+)$", text, re.MULTILINE)
    return found[1] if found else None


def _locked_kfp() -> str | None:
    found = re.search(r"^kfp==(\S+)", LOCK.read_text(), re.MULTILINE)
    return found[1] if found else None


def _stale_yaml_message() -> str:
    """What the developer has to do when the checked-in YAML is not a fresh compile."""
    recorded, installed, locked = (
        _compiled_with(CHECKED_IN.read_text()),
        importlib.metadata.version("kfp"),
        _locked_kfp(),
    )
    lines = [
        "k8s/pipelines/retrain-pipeline.yaml is not what ai_node/retrain/pipeline.py "
        f"compiles to: refresh it with {RECOMPILE} and commit it."
    ]
    if recorded != installed:
        lines.append(f"It was compiled with kfp {recorded}; kfp {installed} is installed here.")
    if installed != locked:
        lines.append(
            f"requirements.lock pins kfp {locked}: run `make install` first, so that the "
            "YAML is compiled with the locked kfp."
        )
    return "\n".join(lines)


def test_checked_in_pipeline_yaml_is_current(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "retrain-pipeline.yaml")
    assert fresh.read_text() == CHECKED_IN.read_text(), _stale_yaml_message()


def test_pipeline_yaml_was_compiled_with_the_locked_kfp() -> None:
    recorded, locked = _compiled_with(CHECKED_IN.read_text()), _locked_kfp()
    assert locked is not None, "requirements.lock pins no kfp: run `make lock`"
    assert recorded == locked, (
        f"k8s/pipelines/retrain-pipeline.yaml was compiled with kfp {recorded}, "
        f"requirements.lock pins kfp {locked}: run `make install`, then {RECOMPILE}"
    )


def test_pipeline_yaml_loads_with_kfp_and_runs_the_pinned_image() -> None:
    component = components.load_component_from_file(str(CHECKED_IN))
    assert component.name == "radnode-retrain"
    assert {"api_url", "models_dir", "auc_margin", "sensitivity_margin", "epochs"} <= set(
        component.component_spec.inputs
    )
    spec, _platform = yaml.safe_load_all(CHECKED_IN.read_text())  # + kubernetes config
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(f"{s}-op" for s in STEPS)
    assert tasks["promote-op"]["dependentTasks"] == ["evaluate-op", "train-op"]
    executors = spec["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {IMAGE}
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors)
    assert all(t["cachingOptions"] == {} for t in tasks.values())  # caching off
    kustomization = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())
    [image] = [i for i in kustomization["images"] if i["name"] == IMAGE.split(":")[0]]
    assert IMAGE == f"{image['name']}:{image['newTag']}"


def test_pipeline_cli_compiles_to_the_given_path(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "p.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "radnode.cli", "pipeline", "compile", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == CHECKED_IN.read_text(), _stale_yaml_message()


def _metrics(auc, sensitivity, specificity=0.8, brier=0.1) -> dict:
    return {
        "auc": auc,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "brier": brier,
        "threshold": 0.5,
    }


@pytest.mark.parametrize(
    ("candidate", "active", "auc_ci", "promoted", "why"),
    [
        (_metrics(0.90, 0.8), _metrics(0.91, 0.8), [-0.04, 0.03], True, "every check holds"),
        (_metrics(0.85, 0.9), _metrics(0.91, 0.8), [-0.12, 0.0], False, "lower bound"),
        (_metrics(0.95, 0.7), _metrics(0.91, 0.8), [-0.01, 0.09], False, "sensitivity 0.700"),
        (_metrics(0.95, 0.9, 0.6), _metrics(0.91, 0.8), [0.0, 0.09], False, "specificity"),
        (_metrics(0.95, 0.9, 0.8, 0.2), _metrics(0.91, 0.8), [0.0, 0.09], False, "Brier"),
        (_metrics(None, 1.0), _metrics(None, 1.0), None, False, "undefined"),
    ],
)
def test_promotion_rule(candidate, active, auc_ci, promoted, why) -> None:
    report = {
        "candidate": candidate,
        "active": active,
        "auc_difference": {"estimate": None, "ci": auc_ci},
    }
    decision, reason, checks = PromotionRule(auc_margin=0.05).decide(report)
    assert decision is promoted and why in reason
    assert [c.name for c in checks] == ["sensitivity", "specificity", "brier", "auc_difference"]


def test_register_inactive_never_becomes_active_by_sort_order(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "finding" / "ACTIVE").unlink()
    registry = ModelRegistry(root)
    model_file = root / "finding" / "1.0.0" / "model.keras"
    registry.register("finding", "zz-candidate", model_file, {"version": "zz"}, activate=False)
    assert registry.active_version("finding") == "1.0.0"
    assert (root / "finding" / "ACTIVE").read_text().strip() == "1.0.0"
    registry.register("finding", "zz-next", model_file, {"version": "zz2"}, activate=True)
    assert registry.active_version("finding") == "zz-next"
    listed = {(m["name"], m["version"]): m["active"] for m in registry.describe()}
    assert listed[("finding", "zz-next")] and not listed[("finding", "zz-candidate")]


def _candidate(tmp_path: Path, root: Path) -> Path:
    """A candidate folder as the train step leaves it (a copy of the shipped model)."""
    from ai_node.retrain.finetune import MODEL_FILE, TRAINING_INFO

    candidate = tmp_path / "candidate"
    candidate.mkdir()
    shutil.copyfile(root / "finding" / "1.0.0" / "model.keras", candidate / MODEL_FILE)
    (candidate / TRAINING_INFO).write_text(json.dumps({"train_studies": 6}))
    return candidate


def _report(active_version: str) -> dict:
    metrics = {"auc": 0.9, "sensitivity": 0.8, "specificity": 0.7, "brier": 0.1, "threshold": 0.5}
    return {
        "candidate": metrics,
        "active": metrics,
        "auc_difference": {"estimate": 0.0, "ci": [-0.02, 0.02]},
        "operating_points": {
            "candidate": {"threshold": 0.5, "target_sensitivity": 0.9, "chosen_on": "val"},
            "active": {"threshold": 0.5, "chosen_on": "settings"},
        },
        "active_version": active_version,
        "studies": 4,
        "positives": 2,
        "patients": 4,
        "prevalence": 0.1,
    }


def test_promotion_never_overwrites_a_model_activated_during_the_run(tmp_path: Path) -> None:
    """The candidate beat 1.0.0; meanwhile someone activated 2.0.0: the candidate is
    registered but refused, and 2.0.0 stays active."""
    from ai_node.retrain.promote import promote_candidate

    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    registry = ModelRegistry(root)
    model_file = root / "finding" / "1.0.0" / "model.keras"
    registry.register("finding", "2.0.0", model_file, {"version": "2.0.0"}, activate=True)
    candidate = _candidate(tmp_path, root)
    decision = promote_candidate(root, candidate, _report("1.0.0"), PromotionRule(), "cand-1")
    assert decision["decision"] == "refused"
    assert "'2.0.0', no longer '1.0.0'" in decision["reason"]
    assert registry.active_version("finding") == "2.0.0"
    assert "cand-1" in registry.versions("finding")
    assert registry.card("finding", "cand-1")["promotion"]["decision"] == "refused"
    # compared against the version still active: promoted
    decision = promote_candidate(root, candidate, _report("2.0.0"), PromotionRule(), "cand-2")
    assert decision["decision"] == "promoted" and registry.active_version("finding") == "cand-2"


def test_activate_with_expected_is_a_compare_and_switch(tmp_path: Path) -> None:
    from ai_node.registry import ActiveChanged

    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    registry = ModelRegistry(root)
    model_file = root / "finding" / "1.0.0" / "model.keras"
    registry.register("finding", "2.0.0", model_file, {}, activate=False)
    with pytest.raises(ActiveChanged):
        registry.activate("finding", "2.0.0", expected="9.9.9")
    assert registry.active_version("finding") == "1.0.0"
    registry.activate("finding", "2.0.0", expected="1.0.0")
    assert registry.active_version("finding") == "2.0.0"


def test_seed_copies_the_shipped_models_once(tmp_path: Path) -> None:
    """The init container's `python -m ai_node.registry seed` (k8s: RADNODE_MODELS_DIR on
    the shared volume): copies each missing task, leaves a seeded one alone."""
    import subprocess

    root = tmp_path / "shared" / "models"
    proc = subprocess.run(
        [sys.executable, "-m", "ai_node.registry", "seed", "--models-dir", str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "seeded chest-xray-opacity, finding, region;" in proc.stdout
    registry = ModelRegistry(root)
    shipped = ModelRegistry()
    for task in ("finding", "region"):
        assert registry.versions(task) == shipped.versions(task)
        assert registry.active_version(task) == shipped.active_version(task)
    model_file = root / "finding" / "1.0.0" / "model.keras"
    registry.register("finding", "retrained", model_file, {}, activate=True)
    assert registry.seed() == []  # already seeded: nothing copied, nothing reset
    assert registry.active_version("finding") == "retrained"
    assert not list(root.glob(".*seed*"))
    unset = subprocess.run(
        [sys.executable, "-m", "ai_node.registry", "seed"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RADNODE_MODELS_DIR"},
    )
    assert unset.returncode == 2 and "RADNODE_MODELS_DIR" in unset.stderr


def test_kfp_cron_takes_five_or_six_fields() -> None:
    assert kfp_cron("0 2 * * 0") == "0 0 2 * * 0"
    assert kfp_cron("0 0 2 * * 0") == "0 0 2 * * 0"
    with pytest.raises(ValueError):
        kfp_cron("daily")


def test_step_watcher_reads_kfp_local_task_lines() -> None:
    seen: list[tuple[str, str]] = []
    root = logging.getLogger()
    watcher = StepWatcher(lambda step, state: seen.append((step, state)))
    root.addFilter(watcher)
    level = root.level
    root.setLevel(logging.INFO)  # as kfp.local sets it while a task runs
    try:
        logging.info("Executing task \x1b[96m'train-op'\x1b[0m")
        logging.info("Task \x1b[96m'train-op'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m")
        logging.error("Task 'promote-op' finished with status FAILURE")
        logging.info("Executing task 'something-else'")
    finally:
        root.setLevel(level)
        root.removeFilter(watcher)
    assert seen == [("train", "running"), ("train", "succeeded"), ("promote", "failed")]


def _add_feedback(node: Node, n: int) -> None:
    now = dt.datetime.now(dt.UTC)
    with node.index.transaction() as conn:
        conn.execute(
            studies.insert().prefix_with("OR IGNORE"),
            {"study_uid": "1.2.3", "first_received_at": 0.0, "last_received_at": 0.0},
        )
        for _ in range(n):
            conn.execute(
                feedback.insert().values(
                    study_uid="1.2.3",
                    result_version=1,
                    ai_sr_sop_instance_uid="1.2.3.4",
                    decision="confirm",
                    label="lesion",
                    model_name="finding",
                    user="u",
                    observer_name="Doe^J",
                    sr_sop_instance_uid="1.2.3.5",
                    predecessor_sop_instance_uid="1.2.3.4",
                    created_at=now,
                )
            )


def test_label_trigger_starts_a_run_at_the_threshold(tmp_path: Path) -> None:
    node = build_node(
        Settings(data_dir=tmp_path / "data", fsync=False, retraining_trigger_labels=3)
    )
    try:
        trigger = LabelTrigger(node)
        _add_feedback(node, 2)
        assert not trigger.due()
        _add_feedback(node, 1)
        assert trigger.due()
        runs = RunStore(node.index)
        run_id = runs.create("manual", labels_upto=3)
        assert not trigger.due()  # a run is going on
        runs.update(run_id, status="succeeded")
        assert not trigger.due()  # it saw those labels
        _add_feedback(node, 3)
        assert trigger.due()
        # the child it starts is `radnode retrain --trigger labels`; without a writable
        # registry (models_dir unset) that refuses with exit status 2 before recording a run
        assert retrain_command("labels")[-3:] == ["retrain", "--trigger", "labels"]
        assert trigger.check()
        assert trigger.child is not None and trigger.child.wait(timeout=120) == 2
        assert [r["run_id"] for r in runs.list()] == [run_id]
    finally:
        node.close()


def test_a_failing_run_is_recorded_with_the_failed_step(tmp_path: Path) -> None:
    """`radnode retrain` against a node that does not answer: the export step fails, the
    command says so (exit 1) and the run record keeps the failed step and the error."""
    import os
    import subprocess

    from tests.support.processes import free_port

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    env = {
        **os.environ,
        "RADNODE_MODELS_DIR": str(models),
        "RADNODE_RETRAINING_API_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "radnode.cli", "retrain", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[1/5] export: failed" in proc.stderr
    node = build_node(Settings(data_dir=data, fsync=False))
    try:
        [run] = RunStore(node.index).list()
    finally:
        node.close()
    assert run["status"] == "failed" and run["steps"]["export"] == "failed"
    assert run["steps"]["train"] == "pending" and run["decision"] is None
    assert (data / "retraining" / "salt").stat().st_mode & 0o077 == 0
    assert ModelRegistry(models).versions("finding") == ["1.0.0"]


def test_the_upload_job_command_line_parses() -> None:
    """The Kubernetes Job runs exactly this command line (k8s: pipeline upload Job)."""
    from radnode.ai_commands import cmd_pipeline_upload
    from radnode.cli import build_parser

    args = build_parser().parse_args(
        [
            "pipeline",
            "upload",
            "--kfp-host",
            "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
            "--schedule",
            "0 2 * * 0",
        ]
    )
    assert args.func is cmd_pipeline_upload
    assert args.kfp_host == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert kfp_cron(args.schedule) == "0 0 2 * * 0"


def test_the_steps_run_as_plain_functions_without_kfp(tmp_path: Path) -> None:
    """export -> preprocess -> train (from scratch) -> evaluate -> promote, called directly."""
    from ai_node.retrain.evaluate import evaluate_candidate, write_report
    from ai_node.retrain.export import LabelledStudy, export_studies
    from ai_node.retrain.finetune import train_candidate
    from ai_node.retrain.prepare import preprocess_dataset
    from ai_node.retrain.promote import promote_candidate
    from ai_node.retrain.report import render_report
    from ai_node.synth import StudySpec, generate_study

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns("__pycache__"))
    fetched, labels = {}, []
    for i in range(10):
        spec = StudySpec(
            region="chest",
            slices=8,
            nodules=i % 2,
            seed=8100 + i,
            rows=128,
            columns=128,
            pixel_spacing_mm=2.8,
        )
        study, datasets = generate_study(spec)
        fetched[study.study_instance_uid] = list(datasets)
        labels.append(LabelledStudy(study.study_instance_uid, ["no lesion", "lesion"][i % 2], i))
    # the split is stratified: train and test hold both classes whatever the salt
    manifest = export_studies(
        tmp_path / "export", labels, fetched.__getitem__, "plain-steps-salt-3", 0.0, 0.5
    )
    by_split = {
        s: {x["label"] for x in manifest["studies"] if x["split"] == s} for s in ("train", "test")
    }
    assert by_split == {"train": {0, 1}, "test": {0, 1}}, manifest["counts"]
    prepared = preprocess_dataset(tmp_path / "export", tmp_path / "prepared")
    assert all(s["slices"] == 8 for s in prepared["studies"])
    info = train_candidate(tmp_path / "prepared", models, tmp_path / "model", 1, True, verbose=0)
    assert info["from_scratch"] and info["base_version"] is None
    assert info["train_studies"] == manifest["counts"]["train"]
    report = evaluate_candidate(tmp_path / "prepared", tmp_path / "model", models, 0.5, samples=200)
    assert report["studies"] == manifest["counts"]["test"] and report["active_version"] == "1.0.0"
    assert report["operating_points"]["active"] == {"threshold": 0.5, "chosen_on": "settings"}
    chosen = report["operating_points"]["candidate"]
    assert chosen["chosen_on"] == "train" and chosen["sensitivity"] >= 0.9  # no val split here
    assert report["candidate"]["threshold"] == chosen["threshold"]
    write_report(report, tmp_path / "r" / "report.json")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["bootstrap"]["samples"] == 200
    decision = promote_candidate(
        models, tmp_path / "model", report, PromotionRule(auc_margin=-1.0), "scratch-1", "run-x"
    )
    assert decision["decision"] == "refused"
    registry = ModelRegistry(models)
    assert "scratch-1" in registry.versions("finding")
    assert registry.active_version("finding") == "1.0.0"
    assert registry.card("finding", "scratch-1")["promotion"]["reason"] == decision["reason"]
    page = render_report(report, decision)
    assert page.count("<svg") == 2 and page.count('class="band"') == 2
    assert "scratch-1: refused" in page and "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no CDN
