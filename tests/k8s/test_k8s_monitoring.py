"""k8s/monitoring/: the Prometheus rules (``promtool check rules`` and ``promtool test
rules``), the Grafana dashboard and the rules against the metrics a running node exports
(its /metrics exposition, not a list kept by hand), and the scraping wired to the pods."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from dicomweb.app import create_app
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.k8s.test_k8s_manifests import K8S, kustomize

MONITORING = K8S / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
ADMIN = "admin-token-0123456789"
METRIC = re.compile(r"\bradnode_[a-z0-9_]+\b")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian's package)")
    return path


def rule_file(folder: Path) -> Path:
    """The PrometheusRule's spec as a plain rule file (what a Prometheus without the
    operator loads), next to the rule unit tests."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    out = folder / "radnode-rules.yml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(MONITORING / "rules-test.yaml", folder / "rules-test.yaml")
    return out


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition declares, with the suffixes each type adds."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":  # declared with or without _total, by client version
                name = name.removesuffix("_total")
            names |= {name + s for s in suffixes.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names in the /metrics of a node with a PACS peer (so its outbox is watched),
    asked over HTTP with an admin token, as the ServiceMonitor does."""
    data = tmp_path_factory.mktemp("node") / "data"
    settings = Settings(
        data_dir=data,
        fsync=False,
        auth_enabled=True,
        api_tokens={ADMIN: "admin"},
        pacs_peers=[{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
    )
    node = build_node(settings)
    try:
        with TestClient(create_app(node)) as client:
            r = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200
            return exported_names(r.text)
    finally:
        node.close(clean=False)


def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [promtool(), "check", "rules", str(rule_file(tmp_path))], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_alerts_fire_as_their_unit_tests_expect(tmp_path: Path) -> None:
    rule_file(tmp_path)
    proc = subprocess.run(
        [promtool(), "test", "rules", "rules-test.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "max(("}]}]})
    )
    proc = subprocess.run([promtool(), "check", "rules", str(broken)], capture_output=True)
    assert proc.returncode != 0


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


def test_every_dashboard_query_names_a_metric_radnode_exports(exported: set[str]) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 15
    for query in queries:
        names = set(METRIC.findall(query))
        assert names, f"no radnode metric in {query!r}"
        assert names <= exported, (query, sorted(names - exported))


def test_every_rule_names_a_metric_radnode_exports(exported: set[str]) -> None:
    spec = yaml.safe_load(RULE.read_text())["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            names = set(METRIC.findall(rule["expr"]))
            assert names <= exported, (rule.get("alert") or rule.get("record"), names - exported)


def test_the_monitoring_doc_lists_every_metric(exported: set[str]) -> None:
    doc = (K8S.parent / "docs" / "monitoring.md").read_text()
    listed = set(re.findall(r"^\| `(radnode_[a-z0-9_]+)` \|", doc, flags=re.MULTILINE))
    families = {
        n for n in exported if not n.endswith(("_created", "_bucket", "_sum", "_count"))
    } | {n.removesuffix("_bucket") for n in exported if n.endswith("_bucket")}
    assert listed == families


def test_the_name_check_catches_a_metric_radnode_does_not_export(exported: set[str]) -> None:
    assert "radnode_model_results_total" in exported
    assert "radnode_model_inference_seconds_bucket" in exported
    assert "radnode_outbox_oldest_pending_seconds" in exported
    assert "radnode_drift_alert" in exported
    assert "radnode_model_results" not in exported  # a counter is queried as _total
    assert "radnode_model_latency_seconds_bucket" not in exported


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }


def test_scraping_is_wired_to_the_pods_that_serve_metrics() -> None:
    monitoring = {o["kind"]: o for o in kustomize(MONITORING)}
    assert set(monitoring) == {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert monitoring["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert all(o["metadata"]["namespace"] == "radnode" for o in monitoring.values())
    pods = _pods(kustomize(K8S / "base"))
    selector = monitoring["PodMonitor"]["spec"]["selector"]["matchExpressions"]
    components = next(e["values"] for e in selector if e["key"] == "app.kubernetes.io/component")
    endpoint = monitoring["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"]
    for component in components:
        template = pods[component]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert endpoint in ports, component
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports[endpoint])
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["RADNODE_METRICS_PORT"] == str(ports[endpoint])
    service = monitoring["ServiceMonitor"]["spec"]
    api = pods["api"]["spec"]["template"]
    assert service["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    assert service["endpoints"][0]["port"] in {
        p["name"] for p in api["spec"]["containers"][0]["ports"]
    }
