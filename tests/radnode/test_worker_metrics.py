"""``radnode worker`` with a metrics port: a real worker process analyses a queued study
and its own /metrics (no HTTP app, no token) shows the per-model result, its latency and
input statistics, and the queue drained."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ai_node.synth import StudySpec
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.analysis import add_study
from tests.support.processes import free_port
from tests.support.radnode_process import WorkerProcess
from tests.support.wait import wait_for


def test_the_worker_serves_its_own_metrics_on_the_metrics_port(tmp_path) -> None:
    data = tmp_path / "data"
    node = build_node(Settings(data_dir=data, fsync=False))
    spec = StudySpec(region="chest", slices=8, nodules=1, seed=3, rows=128, columns=128)
    add_study(node, spec, tmp_path / "in")
    node.close()

    port = free_port()
    worker = WorkerProcess(
        data, "worker", env={"RADNODE_METRICS_PORT": str(port), "RADNODE_HOST": "127.0.0.1"}
    ).start()
    try:
        worker.wait_warm()
        url = f"http://127.0.0.1:{port}/metrics"

        def analysed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            text = httpx.get(url, timeout=5).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            done = [k for k in samples if k[0] == "radnode_jobs_finished_total"]
            return samples if done else None

        samples = wait_for(analysed, timeout=120, what="the worker to finish the study")
        assert samples[("radnode_jobs_finished_total", (("outcome", "done"),))] == 1
        results = {
            dict(labels)["outcome"]: v
            for (name, labels), v in samples.items()
            if name == "radnode_model_results_total" and dict(labels)["model"] == "finding"
        }
        assert sum(results.values()) == 1 and set(results) <= {"positive", "negative"}
        assert samples[("radnode_model_inference_seconds_count", (("model", "finding"),))] == 1
        assert samples[("radnode_input_mean_hu_count", (("model", "finding"),))] == 1
        assert samples[("radnode_queue_depth", ())] == 0
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
