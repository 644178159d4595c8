"""The whole retraining loop on synthetic data, with real processes:

storescu -> ``radnode serve`` (analyses, writes SRs) -> radiologists' feedback through the
API (confirm or relabel) -> ``radnode retrain`` (kfp.local: export, de-identify, split,
preprocess, train, evaluate, promote) -> the still-running worker's next SR carries the
promoted version. A second run whose rule cannot hold is refused and registered inactive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from ai_node.models import load_model
from ai_node.registry import SHIPPED_MODELS, ModelRegistry
from ai_node.retrain.deid import patient_key
from ai_node.retrain.evaluate import study_score
from ai_node.retrain.metrics import point_metrics
from ai_node.retrain.split import assign_splits
from ai_node.synth import StudySpec, write_study
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

ADMIN, RADIOLOGIST = "admin-token-retrain", "radiologist-token-retrain"
REPO = Path(__file__).resolve().parents[2]
N_STUDIES = 14
TEST_FRACTION = 0.4
VAL_FRACTION = 0.15
SALT = "retrain-loop-salt"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_results(
    node: RadnodeProcess, url: str, uids: list[str], timeout: float = 180
) -> dict[str, dict]:
    """Each study's result once every one is final (done, out of scope or failed)."""

    def final() -> dict[str, dict] | None:
        results = {
            uid: httpx.get(
                f"{url}/api/studies/{uid}/result", headers=_auth(ADMIN), timeout=10
            ).json()
            for uid in uids
        }
        if all(r.get("status") in ("done", "out_of_scope", "failed") for r in results.values()):
            return results
        return None

    return wait_for(final, timeout=timeout, what=f"the results of {len(uids)} studies",
                    interval=0.5, detail=lambda: node.log()[-3000:])


def _algorithm_versions(sr: pydicom.Dataset) -> list[str]:
    """TextValue of every Algorithm Version (DCM 111003) content item, at any depth."""
    found: list[str] = []

    def visit(ds: pydicom.Dataset) -> None:
        for item in ds.get("ContentSequence", []):
            code = item.get("ConceptNameCodeSequence")
            if code and code[0].CodeValue == "111003":
                found.append(str(item.TextValue))
            visit(item)

    visit(sr)
    return found


def _audit_messages(audit_dir: Path) -> list[ET.Element]:
    return [
        ET.fromstring(line)
        for path in sorted(audit_dir.glob("audit-*.log"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def _retrain(
    data: Path, env: dict[str, str], version: str, epochs: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            "retrain",
            "--data-dir",
            str(data),
            "--http-port",
            env["RADNODE_HTTP_PORT"],
            "--epochs",
            str(epochs),
            "--version",
            version,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("size", "slices", "epochs"),
    [(256, 24, 1), pytest.param(512, 32, 3, marks=pytest.mark.slow, id="512x512-3-epochs")],
)
def test_labels_to_promoted_model_to_next_sr(
    tmp_path: Path, size: int, slices: int, epochs: int
) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns("__pycache__"))
    studies = {}
    for i in range(N_STUDIES):
        spec = StudySpec(
            region="chest",
            slices=slices,
            nodules=(i % 2) * 2,
            seed=7000 + i,
            rows=size,
            columns=size,
            pixel_spacing_mm=358.0 / size,
        )
        study, files = write_study(spec, tmp_path / "in" / str(i))
        # the radiologists' label: the generator's truth, except on two studies where
        # they disagree with it (so relabels happen whatever the AI answered)
        truth = int(spec.nodules > 0)
        studies[study.study_instance_uid] = (spec, files, 1 - truth if i < 2 else truth)
    # 7 + 7 patients: the stratified split puts 3 of each class in the test split
    salt = SALT
    data = tmp_path / "data"
    env = {
        "RADNODE_MODELS_DIR": str(models),
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps({ADMIN: "admin", RADIOLOGIST: "radiologist"}),
        "RADNODE_FSYNC": "false",
        "RADNODE_RETRAINING_API_TOKEN": ADMIN,
        "RADNODE_RETRAINING_SALT": salt,
        "RADNODE_RETRAINING_VAL_FRACTION": str(VAL_FRACTION),
        "RADNODE_RETRAINING_TEST_FRACTION": str(TEST_FRACTION),
        "RADNODE_RETRAINING_MIN_TEST_POSITIVES": "3",
        "RADNODE_RETRAINING_MIN_TEST_NEGATIVES": "3",
        "RADNODE_RETRAINING_BOOTSTRAP_SAMPLES": "200",
        "RADNODE_RETRAINING_AUC_MARGIN": "1",
        "RADNODE_RETRAINING_SENSITIVITY_MARGIN": "1",
        "RADNODE_RETRAINING_SPECIFICITY_MARGIN": "1",
        "RADNODE_RETRAINING_BRIER_MARGIN": "1",
    }
    node = RadnodeProcess(data, "serve", env=env).start()
    url = f"http://127.0.0.1:{node.http_port}"
    try:
        sent = storescu(node.dicom_port, [f for _, files, _ in studies.values() for f in files])
        assert sent.returncode == 0, sent.stderr
        results = _wait_results(node, url, list(studies))
        assert all(r["status"] == "done" for r in results.values()), (results, node.log()[-3000:])
        assert {r["model_version"] for r in results.values()} == {"finding:1.0.0,region:1.0.0"}

        # radiologists: confirm the AI where it is right, relabel where it is not
        relabelled = 0
        for uid, (_, _, final) in studies.items():
            label = "lesion" if final else "no lesion"
            body = (
                {"decision": "confirm"}
                if results[uid]["label"] == label
                else {"decision": "relabel", "label": label}
            )
            relabelled += body["decision"] == "relabel"
            r = httpx.post(
                f"{url}/api/studies/{uid}/feedback",
                json=body,
                headers=_auth(RADIOLOGIST),
                timeout=30,
            )
            assert r.status_code == 201, r.text
        assert (
            httpx.get(
                f"{url}/api/retraining/labels", headers=_auth(RADIOLOGIST), timeout=10
            ).status_code
            == 403
        )
        labels = httpx.get(f"{url}/api/retraining/labels", headers=_auth(ADMIN), timeout=10).json()
        assert labels["total"] == N_STUDIES and relabelled >= 1
        assert {i["study_uid"]: i["label"] == "lesion" for i in labels["items"]} == {
            uid: bool(final) for uid, (_, _, final) in studies.items()
        }

        # run 1: the rule holds (margins 1): promoted
        run_env = {**os.environ, **env, "RADNODE_HTTP_PORT": str(node.http_port)}
        started = time.monotonic()
        first = _retrain(data, run_env, "retrain-a", epochs)
        elapsed = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        for i, step in enumerate(("export", "preprocess", "train", "evaluate", "promote"), 1):
            assert f"[{i}/5] {step}: succeeded" in first.stderr
        assert "finding retrain-a promoted" in first.stdout
        # the studies released for training are in the audit trail as an Export (110106)
        exports = [
            m for m in _audit_messages(data / "audit")
            if m.find("EventIdentification/EventID[@csd-code='110106']") is not None
        ]
        assert exports, "no Export audit message for the retraining export"
        assert {
            po.attrib["ParticipantObjectID"]
            for po in exports[-1].findall("ParticipantObjectIdentification")
            if po.find("ParticipantObjectIDTypeCode[@csd-code='110180']") is not None
        } == set(studies)
        # the promotion changed what runs on patients' studies: a Software Configuration
        # alert (110113 / 110131) for the candidate's registration and its activation
        changes = [
            po.attrib["ParticipantObjectID"]
            for m in _audit_messages(data / "audit")
            if m.find("EventIdentification/EventTypeCode[@csd-code='110131']") is not None
            for po in m.findall("ParticipantObjectIdentification")
        ]
        assert changes.count("radnode-model:finding:retrain-a") == 2, changes
        print(
            f"radnode retrain (run 1, {size}x{size}x{slices}, {epochs} epochs): "
            f"{elapsed:.1f} s; {relabelled} relabels"
        )

        runs = httpx.get(
            f"{url}/api/retraining/runs", headers=_auth(RADIOLOGIST), timeout=10
        ).json()
        [run] = runs["items"]
        assert run["status"] == "succeeded" and run["decision"] == "promoted"
        assert set(run["steps"].values()) == {"succeeded"}
        assert run["candidate_version"] == "retrain-a"

        # the metrics are the test split's: recompute them here, independently
        classes = {
            patient_key(salt, s.resolved_patient_id()): label for s, _, label in studies.values()
        }
        splits = assign_splits(salt, classes, VAL_FRACTION, TEST_FRACTION)
        test_keys = {key for key, split in splits.items() if split == "test"}
        assert run["metrics"]["test_studies"] == len(test_keys) == 6
        assert run["metrics"]["rule"]["auc_margin"] == 1 and len(run["metrics"]["checks"]) == 4
        prepared = next(Path(run["artifacts"]["pipeline_root"]).rglob("preprocess-op/prepared"))
        manifest = json.loads((prepared / "manifest.json").read_text())
        page = Path(run["artifacts"]["report_html"]).read_text()
        assert page.count("<svg") == 2 and page.count('class="band"') == 2
        assert "retrain-a: promoted" in page
        assert f"report: {run['artifacts']['report_html']}" in first.stdout
        assert {s["patient"] for s in manifest["studies"] if s["split"] == "test"} == test_keys
        registry = ModelRegistry(models)
        new = load_model(
            "finding",
            "retrain-a",
            registry.version_dir("finding", "retrain-a") / "model.keras",
            registry.card("finding", "retrain-a"),
        )
        old = load_model(
            "finding",
            "1.0.0",
            registry.version_dir("finding", "1.0.0") / "model.keras",
            registry.card("finding", "1.0.0"),
        )
        labels_t, new_s, old_s = [], [], []
        for s in manifest["studies"]:
            if s["split"] == "test":
                hu = np.load(prepared / s["file"])["hu"]
                labels_t.append(s["label"])
                new_s.append(study_score(hu, new))
                old_s.append(study_score(hu, old))
        theirs = run["metrics"]["candidate"]
        threshold = run["metrics"]["operating_points"]["candidate"]["threshold"]
        assert run["metrics"]["operating_points"]["candidate"]["chosen_on"] == "val"
        assert registry.card("finding", "retrain-a")["operating_point"]["threshold"] == threshold
        mine = point_metrics(np.asarray(labels_t), np.asarray(new_s), threshold, 0.1)
        assert mine["auc"] == pytest.approx(theirs["auc"], abs=1e-3)
        assert mine["sensitivity"] == pytest.approx(theirs["sensitivity"], abs=1e-3)
        assert mine["brier"] == pytest.approx(theirs["brier"], abs=1e-3)
        active_mine = point_metrics(np.asarray(labels_t), np.asarray(old_s), 0.5, 0.1)
        assert active_mine["auc"] == pytest.approx(run["metrics"]["active"]["auc"], abs=1e-3)
        assert active_mine["specificity"] == pytest.approx(
            run["metrics"]["active"]["specificity"], abs=1e-3
        )

        # the running worker picks the promoted version up: the next SR carries it
        spec = StudySpec(
            region="chest",
            slices=slices,
            nodules=1,
            seed=7999,
            rows=size,
            columns=size,
            pixel_spacing_mm=358.0 / size,
        )
        study, files = write_study(spec, tmp_path / "in" / "after")
        assert storescu(node.dicom_port, files).returncode == 0
        after = _wait_results(node, url, [study.study_instance_uid])[study.study_instance_uid]
        assert after["status"] == "done", after
        assert "finding:retrain-a" in after["model_version"]
        [sr_path] = list(data.rglob(f"{after['sr_sop_instance_uid']}.dcm"))
        assert "retrain-a" in _algorithm_versions(pydicom.dcmread(sr_path))

        # run 2: the lower bound of the AUC difference would have to be 1 or more: refused
        refused_env = {**run_env, "RADNODE_RETRAINING_AUC_MARGIN": "-1"}
        started = time.monotonic()
        second = _retrain(data, refused_env, "retrain-b", epochs)
        print(f"radnode retrain (run 2): {time.monotonic() - started:.1f} s")
        print(first.stdout + first.stderr[-600:])
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        assert "finding retrain-b refused" in second.stdout
        models_api = httpx.get(f"{url}/api/models", headers=_auth(ADMIN), timeout=10).json()
        finding = {m["version"]: m for m in models_api["items"] if m["name"] == "finding"}
        assert finding["retrain-a"]["active"] and not finding["retrain-b"]["active"]
        assert finding["retrain-b"]["promotion"]["decision"] == "refused"
        assert "lower bound is below 1" in finding["retrain-b"]["promotion"]["reason"]
        assert finding["retrain-a"]["metrics"]["auc"] == theirs["auc"]
        newest = httpx.get(f"{url}/api/retraining/runs", headers=_auth(ADMIN), timeout=10).json()
        assert [r["decision"] for r in newest["items"]] == ["refused", "promoted"]
        assert registry.active_version("finding") == "retrain-a"
    finally:
        assert node.stop() == 0
