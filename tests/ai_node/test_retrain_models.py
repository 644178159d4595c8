"""Retraining a model brought as a package: ``radnode retrain --model NAME`` for a chest
X-ray model whose card says ``trainable: true``, from the labels radiologists gave its
results, with real processes:

storescu (radiographs and a chest CT) -> ``radnode serve`` (every model analyses what it is
for) -> feedback on each model's results -> ``radnode retrain --model cxr-small`` -> a new
version of cxr-small with its card carried over, the decision recorded, the change audited.
And the refusals: a model whose card says ``trainable: false``, a model that is not there,
training from scratch a model whose architecture radnode does not know, a package whose
model needs its own code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from ai_node.package import import_package
from ai_node.registry import SHIPPED_MODELS, ModelRegistry, file_sha256
from ai_node.retrain.labels import newest_feedback_id
from ai_node.retrain.local import RetrainError, check_trainable, retrain_command
from ai_node.retrain.runs import RunStore
from ai_node.retrain.trigger import LabelTrigger
from ai_node.synth import StudySpec, write_study
from ai_node.tables import feedback
from radnode.assembly import build_node
from radnode_core.index import studies
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.model_packages import (
    ct_card,
    cxr_card,
    lambda_model,
    radiograph,
    tiny_cxr,
    write_package,
)
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

ADMIN, RADIOLOGIST = "admin-token-cxr", "radiologist-token-cxr"
REPO = Path(__file__).resolve().parents[2]
MODEL = "cxr-small"
N_STUDIES = 10


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _registry(tmp_path: Path) -> Path:
    """The shipped models and a small chest X-ray model (64x64) that may be retrained."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__", ".lock"))
    package = write_package(
        tmp_path / "package",
        tiny_cxr(),
        cxr_card(name=MODEL, input={"size": [64, 64]}, timeout_s=60, trainable=True),
    )
    import_package(ModelRegistry(root), package, activate=True)
    return root


def _retrain(data: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radnode.cli", "retrain", "--data-dir", str(data), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def _audit_messages(audit_dir: Path) -> list[ET.Element]:
    return [
        ET.fromstring(line)
        for path in sorted(audit_dir.glob("audit-*.log"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def _results(url: str, uids: list[str]) -> dict[str, dict[str, dict]]:
    """Each study's results by model, once every one is final."""

    def final() -> dict[str, dict[str, dict]] | None:
        out = {}
        for uid in uids:
            r = httpx.get(f"{url}/api/studies/{uid}/results", headers=_auth(ADMIN), timeout=10)
            if r.status_code != 200:
                return None
            items = {i["model"]: i for i in r.json().get("items", [])}
            if not items or any(
                i["status"] not in ("done", "out_of_scope", "failed") for i in items.values()
            ):
                return None
            out[uid] = items
        return out

    return wait_for(final, timeout=240, what=f"the results of {len(uids)} studies", interval=0.5)


def _judge(url: str, uid: str, model: str, result: dict, label: str) -> None:
    body = (
        {"decision": "confirm", "model": model}
        if result["label"] == label
        else {"decision": "relabel", "label": label, "model": model}
    )
    r = httpx.post(
        f"{url}/api/studies/{uid}/feedback", json=body, headers=_auth(RADIOLOGIST), timeout=30
    )
    assert r.status_code == 201, r.text


def test_retrain_a_radiograph_model_from_its_own_labels(tmp_path: Path) -> None:
    models = _registry(tmp_path)
    files: list[Path] = []
    truth: dict[str, int] = {}
    for i in range(N_STUDIES):
        uid = str(generate_uid())
        truth[uid] = i % 2
        files.append(
            radiograph(
                tmp_path / "in" / str(i),
                study_uid=uid,
                patient_id=f"CXR{i:03d}",
                instance=i + 1,
                opacity=bool(i % 2),
                modality="DX" if i % 3 == 0 else "CR",
                photometric="MONOCHROME1" if i % 4 == 1 else "MONOCHROME2",
            )
        )
    ct, ct_files = write_study(
        StudySpec(region="chest", slices=8, nodules=1, seed=8300, rows=128, columns=128,
                  pixel_spacing_mm=2.8),
        tmp_path / "in" / "ct",
    )
    data = tmp_path / "data"
    env = {
        "RADNODE_MODELS_DIR": str(models),
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps({ADMIN: "admin", RADIOLOGIST: "radiologist"}),
        "RADNODE_FSYNC": "false",
        "RADNODE_RETRAINING_API_TOKEN": ADMIN,
        "RADNODE_RETRAINING_SALT": "cxr-retrain-salt",
        "RADNODE_RETRAINING_VAL_FRACTION": "0.15",
        "RADNODE_RETRAINING_TEST_FRACTION": "0.4",
        "RADNODE_RETRAINING_MIN_TEST_POSITIVES": "2",
        "RADNODE_RETRAINING_MIN_TEST_NEGATIVES": "2",
        "RADNODE_RETRAINING_BOOTSTRAP_SAMPLES": "100",
        "RADNODE_RETRAINING_AUC_MARGIN": "1",
        "RADNODE_RETRAINING_SENSITIVITY_MARGIN": "1",
        "RADNODE_RETRAINING_SPECIFICITY_MARGIN": "1",
        "RADNODE_RETRAINING_BRIER_MARGIN": "1",
    }
    node = RadnodeProcess(data, "serve", env=env).start()
    url = f"http://127.0.0.1:{node.http_port}"
    try:
        sent = storescu(node.dicom_port, [*files, *ct_files])
        assert sent.returncode == 0, sent.stderr
        results = _results(url, [*truth, ct.study_instance_uid])
        for uid in truth:
            assert results[uid][MODEL]["status"] == "done", (results[uid], node.log()[-3000:])
        # the radiologists judge cxr-small by the truth; the shipped opacity model's results
        # of the same radiographs the other way round, and the CT's finding result: labels
        # cxr-small must not learn from
        for uid, positive in truth.items():
            _judge(url, uid, MODEL, results[uid][MODEL], "opacity" if positive else "no opacity")
            other = results[uid].get("chest-xray-opacity")
            if other is not None and other["status"] == "done":
                _judge(url, uid, "chest-xray-opacity", other,
                       "no opacity" if positive else "opacity")
        finding = results[ct.study_instance_uid]["finding"]
        assert finding["status"] == "done", results[ct.study_instance_uid]
        _judge(url, ct.study_instance_uid, "finding", finding, "lesion")

        labels = httpx.get(
            f"{url}/api/retraining/labels",
            params={"model": MODEL},
            headers=_auth(ADMIN),
            timeout=10,
        ).json()
        assert labels["model"] == MODEL and labels["labels"] == ["no opacity", "opacity"]
        assert {i["study_uid"]: i["target"] for i in labels["items"]} == truth
        finding_labels = httpx.get(
            f"{url}/api/retraining/labels", headers=_auth(ADMIN), timeout=10
        ).json()
        assert [i["study_uid"] for i in finding_labels["items"]] == [ct.study_instance_uid]

        run_env = {**os.environ, **env, "RADNODE_HTTP_PORT": str(node.http_port)}
        started = time.monotonic()
        run = _retrain(data, run_env, "--model", MODEL, "--epochs", "1", "--version", "r1")
        print(f"radnode retrain --model {MODEL}: {time.monotonic() - started:.1f} s")
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        for i, step in enumerate(("export", "preprocess", "train", "evaluate", "promote"), 1):
            assert f"[{i}/5] {step}: succeeded" in run.stderr
        assert f"{MODEL} r1 promoted" in run.stdout, run.stdout

        # a new version of cxr-small, its card the active one's with the run's results
        registry = ModelRegistry(models)
        assert registry.active_version(MODEL) == "r1"
        assert registry.versions("finding") == ["1.0.0"]
        before, after = registry.card(MODEL, "1.0"), registry.card(MODEL, "r1")
        for key in ("applicability", "input", "outputs", "sr", "task", "trainable"):
            assert after[key] == before[key], key
        assert after["sha256"] == file_sha256(registry.model_path(MODEL, "r1"))
        assert after["model_file"] == "model.keras"
        assert after["promotion"]["decision"] == "promoted"
        assert after["operating_point"]["threshold"] is not None
        assert after["training"]["base_version"] == "1.0"
        assert after["training"]["input_kind"] == "image"
        assert after["metrics"]["studies"] == 4
        registry.load(MODEL, "r1")  # loads in safe mode, its sha256 checked

        # the run is recorded for cxr-small, with its decision
        [record] = httpx.get(
            f"{url}/api/retraining/runs", headers=_auth(ADMIN), timeout=10
        ).json()["items"]
        assert record["model_name"] == MODEL and record["decision"] == "promoted"
        assert record["candidate_version"] == "r1" and record["status"] == "succeeded"

        # it learnt from its own labels only: every radiograph with cxr-small's label,
        # no CT study, one image per study
        prepared = next(Path(record["artifacts"]["pipeline_root"]).rglob("preprocess-op/prepared"))
        manifest = json.loads((prepared / "manifest.json").read_text())
        assert manifest["model"]["name"] == MODEL
        assert len(manifest["studies"]) == N_STUDIES
        assert sorted(s["label"] for s in manifest["studies"]) == sorted(truth.values())
        assert all(s["slices"] == 1 for s in manifest["studies"])
        exports = [
            m
            for m in _audit_messages(data / "audit")
            if m.find("EventIdentification/EventID[@csd-code='110106']") is not None
        ]
        assert {
            po.attrib["ParticipantObjectID"]
            for po in exports[-1].findall("ParticipantObjectIdentification")
            if po.find("ParticipantObjectIDTypeCode[@csd-code='110180']") is not None
        } == set(truth)
        # its registration and activation: Software Configuration (110131) events
        changes = [
            po.attrib["ParticipantObjectID"]
            for m in _audit_messages(data / "audit")
            if m.find("EventIdentification/EventTypeCode[@csd-code='110131']") is not None
            for po in m.findall("ParticipantObjectIdentification")
        ]
        assert changes.count(f"radnode-model:{MODEL}:r1") == 2, changes
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "chest-xray-opacity"], "chest-xray-opacity:1.0.0 is not trainable"),
        (["--model", "no-such-model"], "no-such-model has no active version"),
        (["--model", MODEL, "--from-scratch"], "training from scratch needs an architecture"),
    ],
)
def test_retrain_refuses_before_recording_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    models = _registry(tmp_path)
    data = tmp_path / "data"
    env = {**os.environ, "RADNODE_MODELS_DIR": str(models), "RADNODE_FSYNC": "false"}
    proc = _retrain(data, env, *args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr
    node = build_node(Settings(data_dir=data, fsync=False))
    try:
        assert RunStore(node.index).list() == []
    finally:
        node.close()
    assert ModelRegistry(models).versions(MODEL) == ["1.0"]


def test_a_package_that_needed_trust_code_is_not_retrained(tmp_path: Path) -> None:
    """Its model loads only with its own code, which retraining does not run."""
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns("__pycache__", ".lock"))
    registry = ModelRegistry(models)
    card = ct_card(
        name="lam",
        model_file="model.keras",
        trainable=True,
        input={
            "size": [32, 32],
            "normalisation": {"scale": "hu_window", "windows": [{"center": 0, "width": 2000}]},
        },
    )
    import_package(
        registry, write_package(tmp_path / "lam", lambda_model(), card), trust_code=True,
        activate=True,
    )
    with pytest.raises(RetrainError, match="imported with --trust-code"):
        check_trainable(registry, "lam")
    check_trainable(registry, "finding")  # the shipped finding model may be retrained


def _feedback(node: Node, model: str, n: int) -> None:
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
                    label="opacity",
                    model_name=model,
                    user="u",
                    observer_name="Doe^J",
                    sr_sop_instance_uid="1.2.3.5",
                    predecessor_sop_instance_uid="1.2.3.4",
                    created_at=now,
                )
            )


def test_the_label_trigger_counts_each_trainable_models_own_labels(tmp_path: Path) -> None:
    models = _registry(tmp_path)
    node = build_node(
        Settings(
            data_dir=tmp_path / "data", fsync=False, models_dir=models, retraining_trigger_labels=3
        )
    )
    try:
        trigger = LabelTrigger(node)
        assert trigger.trainable_models() == [MODEL, "finding"]
        _feedback(node, "chest-xray-opacity", 5)  # not trainable: never counted
        _feedback(node, "finding", 2)
        _feedback(node, MODEL, 2)
        assert trigger.due_model() is None
        _feedback(node, MODEL, 1)
        assert trigger.due_model() == MODEL
        assert retrain_command("labels", MODEL)[-4:] == ["--model", MODEL, "--trigger", "labels"]
        runs = RunStore(node.index)
        upto = newest_feedback_id(node.index, MODEL)
        run_id = runs.create("labels", labels_upto=upto, model=MODEL)
        runs.update(run_id, status="succeeded")
        assert trigger.due_model() is None  # its labels were seen; finding has 2 of 3
        _feedback(node, "finding", 1)
        assert trigger.due_model() == "finding"
    finally:
        node.close()
