"""The Kubernetes manifests (k8s/) against the Kubernetes schemas, a security policy and the code.

Every overlay is built with ``kubectl kustomize`` (as ``kubectl apply -k`` would) and
each object validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict: an unknown field fails). The policy: probes, requests and limits, non-root,
pinned images, no literal secret, NetworkPolicies that leave only the SCP and the
ingress reachable from outside the namespace. The images are the Dockerfile's; the
commands, ports and ``RADNODE_*`` names are radnode's CLI and Settings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from radnode.cli import build_parser
from radnode_core.settings import Settings
from tests.test_deploy_files import (
    COMPOSE,
    DOCKERFILE,
    SECRET_KEY,
    dockerfile_instructions,
    env_mapping,
    settings_from_env,
    unknown_radnode_vars,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.31.0"  # k3s / RKE2 stable channel at the time of writing
NAMESPACE = "radnode"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Containers whose root filesystem stays writable, and why (asserted to be commented).
WRITABLE_ROOT = {"radnode-orthanc/orthanc": "entrypoint writes its generated configuration"}
# Images not built here: pinned third-party peers, the same as docker-compose.yml's.
THIRD_PARTY = ("postgres", "orthancteam/orthanc")
# From outside the namespace only these pods may be reached (by component label).
EXPOSED = {"scp", "api", "ohif"}
# Prometheus (Rancher Monitoring's namespace) may scrape the metrics port of any pod.
MONITORING_NAMESPACE = "cattle-monitoring-system"
METRICS_PORT = 9102
KFP_COMMAND = [
    "radnode", "pipeline", "upload",
    "--kfp-host", "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
    "--schedule",
]


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (it builds the overlays: kubectl kustomize)")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


Container = tuple[str, dict[str, Any], dict[str, Any]]


def containers(objects: list[dict[str, Any]]) -> Iterator[Container]:
    """(workload/container, the container, its pod spec) for every container."""
    for obj, pod in pod_specs(objects):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{obj['metadata']['name']}/{c['name']}", c, pod


def container_of(objects: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    """The workload's one (main) container."""
    (found,) = [c for obj, pod in pod_specs(objects) if obj["metadata"]["name"] == workload
                for c in pod["containers"]]
    return found


def pipeline_platform() -> dict[str, Any]:
    """The Kubernetes config of each step of the checked-in pipeline (its second document)."""
    _spec, platform = yaml.safe_load_all((K8S / "pipelines" / "retrain-pipeline.yaml").read_text())
    return dict(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])


def configmap(objects: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap"
                and o["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    return dict(found["data"])


def container_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with ($(VAR) expanded as the kubelet does)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        (cm,) = [o for o in objects if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"] == source["configMapRef"]["name"]]
        env.update(cm["data"])
    for e in c.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = f"<secret {e['valueFrom']['secretKeyRef']['name']}>"
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), e["value"])
    return env


# -- build and schema ---------------------------------------------------------------


def test_the_lab_and_production_overlays_exist() -> None:
    assert {"k3s-lab", "production"} <= set(OVERLAYS)


def test_every_overlay_builds_into_the_radnode_namespace(built) -> None:
    for name, objects in built.items():
        assert objects, name
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == NAMESPACE, (name, obj["metadata"])
        kinds = {o["kind"] for o in objects}
        assert {"Deployment", "StatefulSet", "Service", "Ingress", "HorizontalPodAutoscaler",
                "PersistentVolumeClaim", "NetworkPolicy", "ConfigMap", "Job"} <= kinds, name


def test_every_object_validates_against_the_kubernetes_schemas(built) -> None:
    for name, objects in built.items():
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_the_schema_validation_rejects_a_broken_object(built) -> None:
    deployment = json.loads(json.dumps(named(built["production"], "Deployment")["radnode-api"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- what each overlay sets ------------------------------------------------------------


def test_the_lab_is_one_node_with_a_nodeport_and_local_storage(built) -> None:
    lab = built["k3s-lab"]
    service = named(lab, "Service")["radnode-scp"]["spec"]
    assert service["type"] == "NodePort" and service["ports"][0]["nodePort"] == 31112
    claims = named(lab, "PersistentVolumeClaim")
    assert claims["radnode-data"]["spec"]["storageClassName"] in ("local-path", "longhorn")
    hpa = named(lab, "HorizontalPodAutoscaler")["radnode-worker"]["spec"]
    assert [m["type"] for m in hpa["metrics"]] == ["Resource"]  # CPU: no Prometheus in a lab


def test_production_runs_replicas_on_longhorn_behind_tls(built) -> None:
    prod = built["production"]
    deployments = named(prod, "Deployment")
    assert deployments["radnode-scp"]["spec"]["replicas"] >= 2
    assert deployments["radnode-api"]["spec"]["replicas"] >= 2
    claims = named(prod, "PersistentVolumeClaim")
    assert claims["radnode-data"]["spec"]["storageClassName"] == "longhorn"
    assert claims["radnode-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (template,) = named(prod, "StatefulSet")["radnode-postgres"]["spec"]["volumeClaimTemplates"]
    assert template["spec"]["storageClassName"] == "longhorn"
    ingress = named(prod, "Ingress")["radnode"]["spec"]
    (tls,) = ingress["tls"]
    (rule,) = ingress["rules"]
    assert tls["secretName"] and tls["hosts"] == [rule["host"]] != ["radnode.example.org"]
    config = configmap(prod, "radnode-config")
    assert config["RADNODE_PUBLIC_URL"] == f"https://{rule['host']}"
    hpa = named(prod, "HorizontalPodAutoscaler")["radnode-worker"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "radnode_queue_depth"
    assert hpa["scaleTargetRef"]["name"] == "radnode-worker" and hpa["maxReplicas"] > 2
    assert "replicas" not in deployments["radnode-worker"]["spec"], "the HPA owns the count"


def test_the_queue_depth_the_hpa_scales_on_is_a_gauge_radnode_exports(tmp_path) -> None:
    from radnode.assembly import build_node

    node = build_node(Settings(data_dir=tmp_path / "data"))
    try:
        text = node.metrics.exposition().decode()
    finally:
        node.close(clean=False)
    assert "# TYPE radnode_queue_depth gauge" in text and "radnode_queue_depth 0.0" in text


def test_the_ingress_sends_the_api_paths_to_the_api_and_the_rest_to_ohif(built, tmp_path) -> None:
    from dicomweb.app import create_app
    from radnode.assembly import build_node

    node = build_node(Settings(data_dir=tmp_path / "data"))
    try:
        app = create_app(node)
        served = [*app.openapi()["paths"], *(getattr(r, "path", "") for r in app.routes)]
    finally:
        node.close(clean=False)
    for name, objects in built.items():
        (rule,) = named(objects, "Ingress")["radnode"]["spec"]["rules"]
        backends = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
        assert backends == {"/dicom-web": "radnode-api", "/api": "radnode-api",
                            "/ui": "radnode-api", "/": "radnode-ohif"}, name
        for path, service in backends.items():
            if service == "radnode-api":  # the app really serves something under it
                assert any(p == path or p.startswith(path + "/") for p in served), path


# -- policy ---------------------------------------------------------------------------


def test_every_container_has_requests_limits_and_a_pinned_image(built) -> None:
    for name, objects in built.items():
        for where, c, _pod in containers(objects):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), (name, where)
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and re.search(r"\d", tag), (where, image)


def test_every_long_running_container_has_liveness_and_readiness_probes(built) -> None:
    for name, objects in built.items():
        for obj, pod in pod_specs(objects):
            if obj["kind"] == "Job":
                continue  # runs to completion: nothing to probe
            for c in pod["containers"]:
                for probe in ("livenessProbe", "readinessProbe"):
                    assert probe in c, (name, obj["metadata"]["name"], c["name"], probe)


def test_every_container_runs_non_root_without_privileges(built) -> None:
    for name, objects in built.items():
        for where, c, pod in containers(objects):
            security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, (name, where)
            assert security.get("runAsUser", 0) != 0, (name, where)
            assert security.get("allowPrivilegeEscalation") is False, (name, where)
            assert security.get("capabilities", {}).get("drop") == ["ALL"], (name, where)
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            read_only = security.get("readOnlyRootFilesystem") is True
            assert read_only or where in WRITABLE_ROOT, (name, where)
            if read_only:
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, (name, where, "needs an emptyDir on /tmp")


def test_writable_root_filesystems_say_why() -> None:
    text = (K8S / "base" / "orthanc.yaml").read_text()
    assert "readOnlyRootFilesystem: false" in text and "generated configuration" in text
    assert set(WRITABLE_ROOT) == {"radnode-orthanc/orthanc"}


_REFERENCE = re.compile(r"\$\((\w+)\)")
_URL_PASSWORD = re.compile(r"://[^/\s:@]*:(?P<password>[^@\s/]*)@")


def _from_secrets(text: str, secret_vars: set[str]) -> bool:
    """True when ``text`` is made only of $(VAR) references to Secret-backed variables."""
    refs = _REFERENCE.findall(text)
    return bool(refs) and _REFERENCE.sub("", text) == "" and set(refs) <= secret_vars


def literal_secrets(objects: list[dict[str, Any]]) -> list[str]:
    """Secret values written into the manifests instead of read from a Secret.

    A Secret object is refused outright. In a container's env, a secret-named variable
    (PASSWORD, TOKEN, ...) must come from ``secretKeyRef`` or be built only from
    ``$(VAR)`` references to such variables; so must the password of a URL and every
    ``"password"`` / RegisteredUsers value inside a JSON value.
    """
    problems: list[str] = []
    for obj in objects:
        if obj["kind"] == "Secret":
            problems.append(f"Secret/{obj['metadata']['name']} is committed")
        if obj["kind"] == "ConfigMap":
            problems += [f"ConfigMap {obj['metadata']['name']}: {k}"
                         for k in obj.get("data", {}) if SECRET_KEY.search(k)]
    for where, c, _pod in containers(objects):
        from_secret: set[str] = set()
        for e in c.get("env", []):
            name = e["name"]
            if "valueFrom" in e:
                if "secretKeyRef" in e["valueFrom"]:
                    from_secret.add(name)
                continue
            value = str(e.get("value", ""))
            plain = SECRET_KEY.search(name) and "REGISTERED_USERS" not in name
            if plain and not _from_secrets(value, from_secret):
                problems.append(f"{where}: {name} is a literal")
            for match in _URL_PASSWORD.finditer(value):
                if not _from_secrets(match["password"], from_secret):
                    problems.append(f"{where}: {name} has a literal URL password")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                continue
            values: list[str] = []
            for item in parsed if isinstance(parsed, list) else [parsed]:
                if isinstance(item, dict):
                    if "REGISTERED_USERS" in name:
                        values += [str(v) for v in item.values()]
                    values += [str(v) for k, v in item.items() if SECRET_KEY.search(str(k))]
            problems += [f"{where}: {name} holds a literal secret" for v in values
                         if not _from_secrets(v, from_secret)]
    return problems


def test_no_literal_secret_is_committed(built) -> None:
    for name, objects in built.items():
        assert literal_secrets(objects) == [], name


@pytest.mark.parametrize("env", [
    [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}],
    [{"name": "RADNODE_DATABASE_URL", "value": "postgresql+psycopg://radnode:hunter2@db/radnode"}],
    [{"name": "RADNODE_PACS_PEERS", "value": '[{"name": "o", "password": "hunter2"}]'}],
    [{"name": "ORTHANC__REGISTERED_USERS", "value": '{"radnode": "hunter2"}'}],
    [{"name": "X", "value": "plain"},  # a reference to a variable that is no Secret
     {"name": "RADNODE_DATABASE_URL", "value": "postgresql://u:$(X)@db/radnode"}],
])
def test_the_literal_secret_check_reports(env) -> None:
    pod = {"containers": [{"name": "c", "env": env}]}
    deployment = {"kind": "Deployment", "metadata": {"name": "d"}}
    objects = [{**deployment, "spec": {"template": {"spec": pod}}}]
    assert literal_secrets(objects)


def test_secrets_the_admin_creates_are_documented(built) -> None:
    referenced: set[str] = set()
    for objects in built.values():
        for _where, c, _pod in containers(objects):
            referenced |= {e["valueFrom"]["secretKeyRef"]["name"]
                           for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        for ingress in named(objects, "Ingress").values():
            referenced |= {t["secretName"] for t in ingress["spec"]["tls"]}
    executors = pipeline_platform()
    referenced |= {e["secretName"] for x in executors.values() for e in x.get("secretAsEnv", [])}
    readme = (K8S / "README.md").read_text()
    assert referenced == {"radnode-postgres", "radnode-orthanc", "radnode-api-tokens",
                          "radnode-tls", "radnode-retraining"}
    for secret in referenced:
        assert re.search(rf"create secret (generic|tls) {secret}\b", readme), secret


def _only_prometheus_scrapes(rule: dict[str, Any]) -> bool:
    """An ingress rule that admits only the monitoring namespace, only on the metrics port."""
    sources = rule.get("from") or [{}]
    return all(
        s.get("namespaceSelector", {}).get("matchLabels")
        == {"kubernetes.io/metadata.name": MONITORING_NAMESPACE} and set(s) == {"namespaceSelector"}
        for s in sources
    ) and [p.get("port") for p in rule.get("ports", [])] == [METRICS_PORT]


def test_network_policies_expose_only_the_scp_and_the_ingress(built) -> None:
    for name, objects in built.items():
        policies = named(objects, "NetworkPolicy")
        deny = [p for p in policies.values() if p["spec"]["podSelector"] == {}
                and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")]
        assert deny, f"{name}: no default-deny ingress policy"
        selected: set[str] = set()
        for policy in policies.values():
            labels = policy["spec"]["podSelector"].get("matchLabels", {})
            component = labels.get("app.kubernetes.io/component")
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                outside = sources is None or any(
                    "namespaceSelector" in s or "ipBlock" in s for s in sources)
                if outside and _only_prometheus_scrapes(rule):
                    continue
                if outside:
                    assert component in EXPOSED, (name, policy["metadata"]["name"])
                    if component != "scp":  # HTTP only through the ingress controller
                        assert sources is not None, (name, policy["metadata"]["name"])
            if component:
                selected.add(component)
        # Default deny covers every pod; each pod that serves a port has a policy that
        # lets its clients in (or it would be unreachable).
        for obj, pod in pod_specs(objects):
            if any(c.get("ports") for c in pod["containers"]):
                component = obj["spec"]["template"]["metadata"]["labels"].get(
                    "app.kubernetes.io/component")
                assert component in selected, (name, obj["metadata"]["name"], "no policy")


# -- against the code -------------------------------------------------------------------


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def dockerfile_targets() -> dict[str, str]:
    """Image name -> Dockerfile stage, from the build commands in the Dockerfile's header."""
    stages = [args.split()[-1] for kw, args in dockerfile_instructions(DOCKERFILE.read_text())
              if kw == "FROM" and " AS " in args.upper()]
    targets: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"#\s+docker build (?:--target (\S+) )?-t (\S+) \.", line)
        if match:
            targets[match[2]] = match[1] or stages[-1]
    assert set(targets.values()) <= set(stages), (targets, stages)
    return targets


def test_the_images_are_the_ones_the_dockerfile_builds(built) -> None:
    targets = dockerfile_targets()
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    compose_images = {str(s.get("image", "")).split(":")[0]: str(s.get("image", ""))
                      for s in compose.values()}
    ours = set()
    for name, objects in built.items():
        for where, c, _pod in containers(objects):
            image = c["image"]
            repo = image.rsplit(":", 1)[0]
            if repo in THIRD_PARTY:
                pinned = compose_images[repo].split(":")[1]
                assert image.split(":")[1].split(".")[0] == pinned.split(".")[0], (where, image)
                continue
            assert image in targets, (name, where, image, sorted(targets))
            assert image.endswith(f":{project_version()}"), (where, image)
            ours.add(image)
    version = project_version()
    assert ours == {f"radnode:{version}", f"radnode-ohif:{version}"}
    assert targets[f"radnode-ohif:{version}"] == "ohif"


def test_the_ohif_image_pins_the_makefiles_ohif_version() -> None:
    makefile = re.search(r"^OHIF_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    docker = re.search(r"^ARG OHIF_VERSION=(\S+)", DOCKERFILE.read_text(), re.M)
    assert makefile and docker and makefile[1] == docker[1]


def test_radnode_commands_are_subcommands_the_cli_accepts(built) -> None:
    parser = build_parser()
    for name, objects in built.items():
        for where, c, _pod in containers(objects):
            command = [*c.get("command", []), *c.get("args", [])]
            if command[:1] != ["radnode"] or command[:3] == KFP_COMMAND[:3]:
                continue
            try:
                parser.parse_args(command[1:])
            except SystemExit:
                pytest.fail(f"{name}: {where}: radnode rejects {command}")


def test_the_kubeflow_job_runs_the_pipeline_upload_command(built) -> None:
    """Fails until `radnode pipeline upload` (the retraining pipeline's CLI) is registered."""
    for name, objects in built.items():
        job = named(objects, "Job")["radnode-pipeline-upload"]
        (c,) = job["spec"]["template"]["spec"]["containers"]
        command = c["command"]
        assert command[:-1] == KFP_COMMAND and len(command[-1].split()) == 5, command
        try:
            build_parser().parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"{name}: radnode has no `{' '.join(command[1:3])}` command yet")


def test_python_module_commands_run_with_the_manifests_settings(
    built, tmp_path, monkeypatch
) -> None:
    """The OHIF origin parses its arguments and listens on its containerPort; the probe
    module loads the same settings (and reports the index as unreachable here)."""
    import uvicorn

    from radnode import probe
    from viewer_plugin.ohif import __main__ as ohif_main

    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html></html>")
    objects = built["production"]
    ohif = container_of(objects, "radnode-ohif")
    command = ohif["command"]
    assert command[:3] == ["python", "-m", "viewer_plugin.ohif"]
    args = command[3:]
    args[args.index("--dist") + 1] = str(dist)
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(kw))
    settings_from_env(container_env(objects, ohif), monkeypatch)
    assert ohif_main.main(args) == 0
    (port,) = ohif["ports"]
    assert served["port"] == port["containerPort"] and served["host"] == "0.0.0.0"

    worker = container_of(objects, "radnode-worker")
    assert worker["livenessProbe"]["exec"]["command"] == ["python", "-m", "radnode.probe"]
    env = container_env(objects, worker)
    env["RADNODE_DATABASE_URL"] = "postgresql+psycopg://radnode:x@127.0.0.1:1/radnode"
    settings_from_env(env, monkeypatch)
    assert probe.main([]) == 1  # settings valid (2 otherwise), the index is unreachable here


def test_radnode_settings_names_and_ports_match(built, monkeypatch) -> None:
    compose_env = env_mapping(
        yaml.safe_load(COMPOSE.read_text())["x-radnode"]["environment"])
    for name, objects in built.items():
        config = configmap(objects, "radnode-config")
        assert all(k.startswith("RADNODE_") for k in config), name
        assert unknown_radnode_vars(config) == [], name
        for where, c, _pod in containers(objects):
            env = container_env(objects, c)
            assert unknown_radnode_vars([k for k in env if k.startswith("RADNODE_")]) == [], where
        for deployment in named(objects, "Deployment").values():
            (c,) = deployment["spec"]["template"]["spec"]["containers"]
            if not c.get("command", [""])[0] == "radnode":
                continue
            env = container_env(objects, c)
            # every setting compose gives the radnode services, Kubernetes gives too
            per_role = {"RADNODE_API_TOKENS", "RADNODE_PACS_PEERS"}  # where the role needs them
            assert set(compose_env) - per_role <= set(env), where
            env = {k: ("{}" if v.startswith("<secret") else v) for k, v in env.items()}
            settings = settings_from_env(env, monkeypatch)  # every value validates
            assert str(settings.data_dir) == "/data" and settings.index_url.startswith("postgresql")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            role = c["command"][1]
            metrics = {"metrics": settings.metrics_port}
            expected = {"scp": {"dicom": settings.dicom_port, **metrics},
                        "api": {"http": settings.http_port}, "worker": metrics}[role]
            if role != "api":  # scraped on the port the process serves its metrics on
                annotations = deployment["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/port"] == str(settings.metrics_port) != "0"
            assert ports == expected, (name, role)
        services = named(objects, "Service")
        for service in services.values():
            selector = service["spec"]["selector"]
            pods = [o for o in objects if o["kind"] in WORKLOADS and selector.items()
                    <= o["spec"]["template"]["metadata"]["labels"].items()]
            assert len(pods) == 1, service["metadata"]["name"]
            (c,) = pods[0]["spec"]["template"]["spec"]["containers"]
            names = {p["name"] for p in c["ports"]}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_the_api_probes_are_routes_the_app_serves(built) -> None:
    from dicomweb.routes import health

    paths = {route.path for route in health.router.routes}  # type: ignore[attr-defined]
    for objects in built.values():
        api = container_of(objects, "radnode-api")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert api[probe]["httpGet"]["path"] in paths
        scp = container_of(objects, "radnode-scp")
        for probe in ("livenessProbe", "readinessProbe"):
            assert scp[probe]["tcpSocket"]["port"] == "dicom"


# -- the retraining pipeline in the cluster ---------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_the_pipeline_runs_with_the_clusters_secret_volume_and_network(built) -> None:
    """The compiled pipeline's Kubernetes config (kfp-kubernetes) against the manifests:
    the export step gets the Secret the workers read, under the same keys, and a pod
    label the API's NetworkPolicy admits; train/evaluate/promote mount the shared PVC
    where RADNODE_MODELS_DIR is."""
    from ai_node.retrain.pipeline import DATA_MOUNT, EXPORT_POD_LABEL, retrain_pipeline

    executors = pipeline_platform()
    assert set(executors) == {f"exec-{s}-op" for s in ("export", "train", "evaluate", "promote")}
    export = executors["exec-export-op"]
    assert "pvcMount" not in export  # the export talks HTTP only
    (secret,) = export["secretAsEnv"]
    from_secret = {e["envVar"]: e["secretKey"] for e in secret["keyToEnv"]}
    assert set(from_secret) == {"RADNODE_RETRAINING_SALT", "RADNODE_RETRAINING_API_TOKEN"}
    assert secret["optional"] is False
    pod_labels = {"pipelines.kubeflow.org/v2_component": "true",  # KFP v2 on every pod
                  **export["podMetadata"]["labels"]}
    assert dict([EXPORT_POD_LABEL]).items() <= pod_labels.items()
    default_models = retrain_pipeline.component_spec.inputs["models_dir"].default
    for step in ("train", "evaluate", "promote"):
        (mount,) = executors[f"exec-{step}-op"]["pvcMount"]
        assert mount["mountPath"] == DATA_MOUNT and "secretAsEnv" not in executors[
            f"exec-{step}-op"]
        assert Path(default_models).is_relative_to(mount["mountPath"])
    for name, objects in built.items():
        claims = named(objects, "PersistentVolumeClaim")
        for step in ("train", "evaluate", "promote"):
            assert executors[f"exec-{step}-op"]["pvcMount"][0]["constant"] in claims, name
        config = configmap(objects, "radnode-config")
        assert config["RADNODE_MODELS_DIR"] == default_models
        assert Path(config["RADNODE_DATA_DIR"]) == Path(DATA_MOUNT)
        worker = container_of(objects, "radnode-worker")
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}
        for env, key in from_secret.items():
            assert refs[env] == {"name": secret["secretName"], "key": key, "optional": True}
        api_rule = named(objects, "NetworkPolicy")["radnode-api-http"]["spec"]["ingress"]
        sources = [src["podSelector"] for rule in api_rule for src in rule["from"]
                   if "podSelector" in src and "namespaceSelector" not in src]
        assert any(_matches(sel, pod_labels) for sel in sources), name
        other_step = {"pipelines.kubeflow.org/v2_component": "true"}
        assert not any(_matches(sel, other_step) for sel in sources), name
        job = container_of(objects, "radnode-pipeline-upload")
        assert container_env(objects, job)["KFP_NAMESPACE"] == NAMESPACE


def test_the_model_seed_init_containers_seed_the_configured_registry(
    built, tmp_path, monkeypatch
) -> None:
    """API and worker pods run `python -m ai_node.registry seed` with the ConfigMap's
    settings before they start: the registry on the volume then holds every task."""
    from ai_node.registry import SHIPPED_MODELS, ModelRegistry
    from ai_node.registry import main as registry_main

    for name, objects in built.items():
        for workload in ("radnode-api", "radnode-worker"):
            pod = named(objects, "Deployment")[workload]["spec"]["template"]["spec"]
            (init,) = pod["initContainers"]
            command = init["command"]
            assert command[:3] == ["python", "-m", "ai_node.registry"], (name, workload)
            env = container_env(objects, init)
            mounts = {m["mountPath"] for m in init["volumeMounts"]}
            assert any(Path(env["RADNODE_MODELS_DIR"]).is_relative_to(m) for m in mounts)
            root = tmp_path / name / workload / "models"
            env["RADNODE_MODELS_DIR"] = str(root)
            settings_from_env(env, monkeypatch)
            assert registry_main(command[3:]) == 0
            registry, shipped = ModelRegistry(root), ModelRegistry(SHIPPED_MODELS)
            for task in ("finding", "region"):
                assert registry.active_version(task) == shipped.active_version(task)
