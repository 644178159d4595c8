"""The stratified patient split and the test split's minimum: a label set that cannot give
the evaluation enough of both classes stops the run before training, saying how many more
labels of which class it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ai_node.registry import SHIPPED_MODELS, ModelRegistry
from ai_node.retrain.export import LabelledStudy, export_studies, split_minimum
from ai_node.retrain.runs import RunStore
from ai_node.retrain.split import (
    SplitError,
    SplitMinimum,
    assign_splits,
    check_label_counts,
    more_needed,
    split_sizes,
)
from ai_node.synth import StudySpec, generate_study
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def test_split_is_stratified_by_class_and_keeps_patients_together() -> None:
    patients = {f"P{i:03d}": int(i < 40) for i in range(100)}  # 40 positive, 60 negative
    splits = assign_splits("salt-1", patients, 0.15, 0.3)
    count = {
        (label, split): sum(1 for k, v in patients.items() if v == label and splits[k] == split)
        for label in (0, 1)
        for split in ("train", "val", "test")
    }
    assert (count[1, "test"], count[1, "val"], count[1, "train"]) == (12, 6, 22)
    assert (count[0, "test"], count[0, "val"], count[0, "train"]) == (18, 9, 33)
    assert assign_splits("salt-1", patients, 0.15, 0.3) == splits  # a pure function
    assert assign_splits("salt-2", patients, 0.15, 0.3) != splits  # of the salt too


def test_split_sizes_add_up_and_round_half_up() -> None:
    assert split_sizes(7, 0.2, 0.4) == {"test": 3, "val": 1, "train": 3}
    assert split_sizes(1, 0.15, 0.3) == {"test": 0, "val": 0, "train": 1}
    for n in range(60):
        assert sum(split_sizes(n, 0.15, 0.3).values()) == n


def test_more_needed_reaches_the_minimum_exactly() -> None:
    # 10 in the test split need round(0.3 n) >= 10, n >= 32
    assert more_needed(1, 0, 10, 0.3) == 31
    assert more_needed(13, 4, 10, 0.3) == 19
    assert more_needed(32, 10, 10, 0.3) == 0


def test_a_one_class_test_split_is_refused_with_what_to_label() -> None:
    """14 labels, 1 with a lesion: the test split would hold no lesion study."""
    minimum = split_minimum(10, 10)
    with pytest.raises(SplitError) as refused:
        check_label_counts([1] + [0] * 13, minimum, 0.3)
    message = str(refused.value)
    assert "0 'lesion' and 4 'no lesion' studies" in message
    assert "31 more 'lesion' and 19 more 'no lesion' studies" in message


def _fetched(n: int) -> tuple[dict, list[LabelledStudy]]:
    fetched, labels = {}, []
    for i in range(n):
        spec = StudySpec(
            region="chest", slices=2, nodules=i % 2, seed=9100 + i, rows=32, columns=32
        )
        study, datasets = generate_study(spec)
        fetched[study.study_instance_uid] = list(datasets)
        labels.append(LabelledStudy(study.study_instance_uid, ["no lesion", "lesion"][i % 2], i))
    return fetched, labels


def test_export_refuses_a_test_split_below_the_minimum(tmp_path: Path) -> None:
    """After de-identification and the split: 7 + 7 patients give 2 of each class to the
    test split; 3 of each are asked for."""
    fetched, labels = _fetched(14)
    with pytest.raises(SplitError) as refused:
        export_studies(
            tmp_path / "out",
            labels,
            fetched.__getitem__,
            "salt-12345",
            0.0,
            0.3,
            SplitMinimum(3, 3, ("no lesion", "lesion")),
        )
    assert "2 'lesion' and 2 'no lesion' studies" in str(refused.value)
    assert "2 more 'lesion' and 2 more 'no lesion'" in str(refused.value)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["positives"]["test"] == 2 and manifest["counts"]["test"] == 4
    # the same labels with a minimum they meet: every split holds both classes
    manifest = export_studies(
        tmp_path / "ok",
        labels,
        fetched.__getitem__,
        "salt-12345",
        0.0,
        0.3,
        SplitMinimum(2, 2),
    )
    assert manifest["positives"] == {"train": 5, "val": 0, "test": 2}


class _Labels(BaseHTTPRequestHandler):
    items: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"total": len(self.items), "items": self.items}).encode()
        path = self.path.split("?")[0]  # ?model=finding
        self.send_response(200 if path == "/api/retraining/labels" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def labels_api() -> Iterator[str]:
    """A node API that only lists 14 labels, 1 of them lesion (and serves no study)."""
    _Labels.items = [
        {
            "study_uid": f"1.2.3.{i}",
            "label": "lesion" if i == 0 else "no lesion",
            "decision": "confirm",
            "feedback_id": i + 1,
        }
        for i in range(14)
    ]
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Labels)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_radnode_retrain_stops_before_training_and_says_what_to_label(
    tmp_path: Path, labels_api: str
) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    env = {
        **os.environ,
        "RADNODE_MODELS_DIR": str(models),
        "RADNODE_RETRAINING_API_URL": labels_api,
        "RADNODE_RETRAINING_SALT": "stop-before-training",
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
    assert "[1/5] export: failed" in proc.stderr and "[3/5] train" not in proc.stderr

    assert "31 more 'lesion' and 19 more 'no lesion' studies" in proc.stderr
    assert len(proc.stdout.splitlines()) < 5, proc.stdout  # kfp.local's output is in the log
    node = build_node(Settings(data_dir=data, fsync=False))
    try:
        [run] = RunStore(node.index).list()
    finally:
        node.close()
    assert run["status"] == "failed" and "31 more 'lesion'" in run["error"]
    assert run["steps"]["export"] == "failed" and run["steps"]["train"] == "pending"
    log = Path(run["artifacts"]["log"])
    assert f"KFP log: {log}" in proc.stderr and "SplitError" in log.read_text()
    assert ModelRegistry(models).versions("finding") == ["1.0.0"]
