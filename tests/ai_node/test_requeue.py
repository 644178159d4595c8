"""Running studies through the analysis again (``radnode results requeue`` and
``POST /api/results/requeue``): exactly the selected studies get one new job each, as a
new study version with its own result row; asking twice queues nothing more; audited."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from fastapi.testclient import TestClient

from ai_node.results import ResultStore
from ai_node.synth import StudySpec
from dicomweb.app import create_app
from radnode.assembly import build_node
from radnode_core.index import utcnow
from radnode_core.jobs import Job
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all
from tests.support.security import child

REPO = Path(__file__).resolve().parents[2]
ADMIN, RADIOLOGIST = "admin-token-requeue", "radiologist-token-requeue"
BROKEN, GOOD = "finding:bad,region:1.0.0", "finding:1.0.0,region:1.0.0"


class Recorder:
    """A processor that writes the planned result of each study and remembers the jobs."""

    def __init__(self, store: ResultStore, plan: dict[str, tuple[str, str]]) -> None:
        self.store, self.plan = store, plan
        self.jobs: list[tuple[str, int, str]] = []

    def __call__(self, job: Job) -> None:
        self.jobs.append((job.study_uid, job.version, job.reason))
        status, models = self.plan.get(job.study_uid, ("done", GOOD))
        finished = utcnow() if job.study_uid != self.old else dt.datetime(2020, 1, 2, tzinfo=dt.UTC)
        self.store.upsert(
            job.study_uid,
            job.version,
            job.id,
            status=status,
            model_version=models,
            finished_at=finished,
            error="boom" if status == "failed" else None,
        )

    old = ""


@pytest.fixture
def studies(tmp_path: Path) -> Iterator[tuple[Node, dict[str, str], Recorder]]:
    """Four analysed studies: a, b failed under the broken model, c done, d failed in 2020
    under the good one."""
    node = build_node(
        Settings(
            data_dir=tmp_path / "data",
            fsync=False,
            auth_enabled=True,
            api_tokens={ADMIN: "admin", RADIOLOGIST: "radiologist"},
        )
    )
    uids = {}
    for i, name in enumerate("abcd"):
        spec = StudySpec(region="chest", slices=2, seed=9300 + i, rows=32, columns=32)
        uids[name] = add_study(node, spec, tmp_path / "in" / name).study_instance_uid
    plan = {
        uids["a"]: ("failed", BROKEN),
        uids["b"]: ("failed", BROKEN),
        uids["c"]: ("done", BROKEN),
        uids["d"]: ("failed", GOOD),
    }
    recorder = Recorder(ResultStore(node.index), plan)
    recorder.old = uids["d"]
    run_all(node, recorder)
    assert len(recorder.jobs) == 4
    recorder.plan = {}  # from now on every analysis succeeds
    recorder.jobs = []
    yield node, uids, recorder
    node.close()


V = 2
"""The version of each study's first job (its two instances)."""


def _jobs(node: Node, uid: str) -> list[tuple[int, str]]:
    return [(cast(int, j["version"]), str(j["reason"])) for j in node.queue.jobs_for(uid)]


def _requeue_cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            "results",
            "requeue",
            "--data-dir",
            str(node.settings.data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _audited(node: Node) -> list[ET.Element]:
    return [
        ET.fromstring(line)
        for path in sorted((node.settings.data_dir / "audit").glob("audit-*.log"))
        for line in path.read_bytes().splitlines()
        if b"requeued for AI analysis" in line
    ]


def test_cli_requeues_what_the_broken_model_failed_once_each(studies) -> None:
    node, uids, recorder = studies
    dry = _requeue_cli(node, "--status", "failed", "--model-version", "bad", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()[-2:]) == sorted([uids["a"], uids["b"]])
    assert _jobs(node, uids["a"]) == [(V, "manual")]

    first = _requeue_cli(node, "--status", "failed", "--model-version", "bad")
    assert first.returncode == 0, first.stderr
    assert "requeued 2 of 2 matching studies" in first.stdout
    second = _requeue_cli(node, "--status", "failed", "--model-version", "bad")
    assert "requeued 0 of 2" in second.stdout and "skipped 2" in second.stdout
    for name in "ab":
        assert _jobs(node, uids[name]) == [(V, "manual"), (V + 1, "requeue")]
    for name in "cd":
        assert _jobs(node, uids[name]) == [(V, "manual")]

    run_all(node, recorder)
    assert sorted(recorder.jobs) == sorted((uids[n], V + 1, "requeue") for n in "ab")
    store = ResultStore(node.index)
    for name in "ab":
        result, old = store.study_result(uids[name]), store.get(uids[name], V)
        assert result is not None and old is not None
        assert result["status"] == "done"
        assert old["status"] == "failed"  # the old result stays
    [message] = _audited(node)
    assert child(message, "EventIdentification/EventID").attrib["csd-code"] == "110103"
    named = {
        po.attrib["ParticipantObjectID"]
        for po in message.findall("ParticipantObjectIdentification")
        if po.find("ParticipantObjectIDTypeCode[@csd-code='110180']") is not None
    }
    assert named == {uids["a"], uids["b"]}
    assert child(message, "ActiveParticipant").attrib["UserID"].startswith("cli:")

    refused = _requeue_cli(node)
    assert refused.returncode == 2 and "status or a model version" in refused.stderr


def test_api_requeues_for_admins_only(studies) -> None:
    node, uids, recorder = studies
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(node)) as client:
        url = "/api/results/requeue"
        body = {"status": "failed"}
        forbidden = {"Authorization": f"Bearer {RADIOLOGIST}"}
        assert client.post(url, json=body, headers=forbidden).status_code == 403
        assert client.post(url, json={}, headers=admin).status_code == 422
        assert client.post(url, json={"status": "nope"}, headers=admin).status_code == 422

        recent = client.post(url, json={**body, "since": "2024-01-01"}, headers=admin).json()
        assert recent["selected"] == 2 and not recent["dry_run"]  # a, b; d failed in 2020
        assert {r["study_uid"] for r in recent["requeued"]} == {uids["a"], uids["b"]}
        again = client.post(url, json={**body, "since": "2024-01-01"}, headers=admin).json()
        assert again["requeued"] == [] and sorted(again["skipped"]) == sorted(
            [uids["a"], uids["b"]]
        )
        preview = client.post(
            url,
            json={"model_version": "1.0.0", "status": "failed", "dry_run": True},
            headers=admin,
        ).json()
        assert preview["selected"] == 1 and preview["requeued"] == []
        assert _jobs(node, uids["d"]) == [(V, "manual")]
        run_all(node, recorder)
        assert sorted(recorder.jobs) == sorted((uids[n], V + 1, "requeue") for n in "ab")

        # after the model change: what the old (broken) model scored, whatever its status
        scored = client.post(url, json={"model_version": "bad"}, headers=admin).json()
        assert {r["study_uid"] for r in scored["requeued"]} == {uids["c"]}
        assert scored["requeued"][0]["version"] == V + 1
    assert len(_audited(node)) == 2
