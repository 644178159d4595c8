"""Static checks of the deployment files against the code they deploy.

No Docker engine or cluster is needed: the Dockerfile, docker-compose.yml and the
the compose file are parsed and compared with ``radnode.cli.build_parser()`` (every
command is a real subcommand) and ``radnode_core.settings.Settings`` (every
``RADNODE_*`` variable is a field and every value validates; ports equal the
defaults). ``docker compose config`` runs when installed. The Kubernetes manifests
have their own tests in tests/k8s/.

docs/configuration.md carries a table generated from ``Settings.model_fields``;
regenerate it after changing the settings with::

    .venv/bin/python -m tests.test_deploy_files
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
import yaml
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from radnode.cli import build_parser
from radnode_core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
CONFIG_DOC = REPO / "docs" / "configuration.md"
DEPLOY_DOC = REPO / "docs" / "deployment.md"

ENV_PREFIX = "RADNODE_"
# RADNODE_* variables that are not fields: the config file's path (Settings.load).
NON_FIELD_VARS = {"RADNODE_CONFIG"}
ROLES = {"scp", "api", "worker"}  # the scale-out processes
SERVER_COMMANDS = ROLES | {"serve"}  # long-running subcommands a container may run
FIELDS: dict[str, FieldInfo] = Settings.model_fields
RADNODE_VAR = re.compile(r"\bRADNODE_[A-Z0-9_]+\b")


# -- helpers ----------------------------------------------------------------------


def field_default(name: str) -> Any:
    info = FIELDS[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def unknown_radnode_vars(names: typing.Iterable[str]) -> list[str]:
    """RADNODE_* names that are neither a Settings field nor RADNODE_CONFIG.

    pydantic-settings ignores an unknown RADNODE_* variable silently, so a typo in a
    deployment file would otherwise go unnoticed.
    """
    return sorted(
        name
        for name in names
        if name not in NON_FIELD_VARS
        and not (name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() in FIELDS)
    )


def command_problems(argv: list[str]) -> list[str]:
    """Why ``argv`` (with or without a leading "radnode") is not a server subcommand."""
    if argv[:1] == ["radnode"]:
        argv = argv[1:]
    if not argv or argv[0] not in SERVER_COMMANDS:
        return [f"{argv!r} is not one of the radnode server subcommands {sorted(SERVER_COMMANDS)}"]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return [f"radnode rejects the arguments {argv!r}"]
    return []


def subcommands() -> set[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("radnode has no subcommands")


def settings_from_env(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a process with exactly these RADNODE_* variables would build them."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, str(value))
    return Settings.load()  # RADNODE_CONFIG is unset here: no file is read


# Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}; $$ is a literal $.
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
REQUIRED_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op is None:
            if value is None:
                raise KeyError(f"${{{name}}} is not set")
            return value
        unset = value is None or (op.startswith(":") and value == "")
        if not unset:
            return value  # type: ignore[return-value]
        if op.endswith("?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return arg

    parts = text.split("$$")
    return "$".join(INTERPOLATION.sub(replace, part) for part in parts)


def interpolate_tree(obj: Any, env: Mapping[str, str]) -> Any:
    if isinstance(obj, str):
        return interpolate(obj, env)
    if isinstance(obj, list):
        return [interpolate_tree(item, env) for item in obj]
    if isinstance(obj, dict):
        return {key: interpolate_tree(value, env) for key, value in obj.items()}
    return obj


SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|REGISTERED_USERS|CREDENTIAL", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/\s:@]*:(?P<password>[^@\s/]*)@")


def _tokenise(value: str) -> tuple[str, list[str]]:
    """Replace each ${...} by a placeholder so URL parsing does not see its colons."""
    found: list[str] = []

    def keep(match: re.Match[str]) -> str:
        found.append(match[0])
        return f"\x00{len(found) - 1}\x00"

    return INTERPOLATION.sub(keep, value), found


def _untokenise(value: str, found: list[str]) -> str:
    return re.sub("\x00(\\d+)\x00", lambda m: found[int(m[1])], value)


def literal_secrets(obj: Any, where: str = "") -> list[str]:
    """Secrets written into a compose file instead of taken from a required variable.

    A password (a secret-named key, the password of a URL, a value of Orthanc's
    RegisteredUsers) must be exactly ``${VAR}`` or ``${VAR:?message}``: a literal,
    or a ``${VAR:-default}`` whose default is the secret, is reported.
    """
    problems: list[str] = []
    items: list[tuple[str, Any]]
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):  # includes environment lists of KEY=VALUE
        items = []
        for i, item in enumerate(obj):
            key, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
            items.append((key, value) if sep else (str(i), item))
    else:
        return problems
    for key, value in items:
        path = f"{where}.{key}" if where else key
        if not isinstance(value, str):
            problems += literal_secrets(value, path)
            continue
        tokenised, found = _tokenise(value)
        for match in URL_PASSWORD.finditer(tokenised):
            password = _untokenise(match["password"], found)
            if not REQUIRED_VAR.fullmatch(password):
                problems.append(f"{path}: URL password {password!r} is not a required ${{VAR}}")
        if not SECRET_KEY.search(key):
            continue
        if "REGISTERED_USERS" in key.upper():
            try:
                users = json.loads(tokenised, strict=False)  # placeholders are control chars
            except json.JSONDecodeError:
                problems.append(f"{path}: not a JSON object of user: password")
                continue
            secrets = [_untokenise(str(v), found) for v in users.values()]
        else:
            secrets = [value]
        problems += [
            f"{path}: {secret!r} is not a required ${{VAR}}"
            for secret in secrets
            if not REQUIRED_VAR.fullmatch(secret)
        ]
    return problems


def env_mapping(environment: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or list of KEY=VALUE) as a dict."""
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    return dict(str(item).split("=", 1) for item in environment)


# -- Dockerfile -----------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def exposed_ports(stage: list[tuple[str, str]]) -> set[int]:
    return {
        int(word.split("/")[0]) for kw, args in stage if kw == "EXPOSE" for word in args.split()
    }


@pytest.fixture(scope="module")
def docker_stage() -> list[tuple[str, str]]:
    return final_stage(dockerfile_instructions(DOCKERFILE.read_text()))


def test_dockerfile_bases_are_python_311_slim() -> None:
    bases = [
        args.split()[0]
        for kw, args in dockerfile_instructions(DOCKERFILE.read_text())
        if kw == "FROM"
    ]
    assert bases, "no FROM"
    assert all(b == "python:3.11-slim" or b.startswith("python:3.11-slim-") for b in bases), bases


def test_dockerfile_exposes_the_settings_default_ports(docker_stage: list[tuple[str, str]]) -> None:
    assert exposed_ports(docker_stage) == {field_default("dicom_port"), field_default("http_port")}


def test_dockerfile_runs_radnode_as_non_root(docker_stage: list[tuple[str, str]]) -> None:
    users = [args for kw, args in docker_stage if kw == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    entrypoints = [json.loads(args) for kw, args in docker_stage if kw == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == ["radnode"]
    cmds = [json.loads(args) for kw, args in docker_stage if kw == "CMD"]
    assert cmds, "no default CMD"
    assert command_problems(cmds[-1]) == []


def test_dockerfile_env_volume_and_settings(
    docker_stage: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dockerfile_env(docker_stage)
    assert env.get("RADNODE_DATA_DIR") == "/data"
    assert env.get("RADNODE_HOST") == "0.0.0.0"
    assert unknown_radnode_vars(RADNODE_VAR.findall(DOCKERFILE.read_text())) == []
    settings = settings_from_env(env, monkeypatch)
    volumes = [v for kw, args in docker_stage if kw == "VOLUME" for v in args.strip("[]").split()]
    assert str(settings.data_dir) in [v.strip('"') for v in volumes], volumes
    assert not SECRET_KEY.search(" ".join(env)) and "DATABASE_URL" not in " ".join(env)


def test_dockerfile_healthcheck_uses_python_on_healthz(docker_stage: list[tuple[str, str]]) -> None:
    checks = [args for kw, args in docker_stage if kw == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    check = checks[0]
    assert "CMD" in check and "/healthz" in check and "urllib" in check, check
    assert str(field_default("http_port")) in check and "RADNODE_HTTP_PORT" in check
    assert not re.search(r"\b(curl|wget)\b", check), "python:3.11-slim has neither curl nor wget"


def test_dockerfile_copies_every_installed_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in REPO.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    }
    assert "radnode" in packages
    copied = {
        Path(word).name
        for kw, args in dockerfile_instructions(DOCKERFILE.read_text())
        if kw == "COPY" and not args.startswith("--from")
        for word in args.split()[:-1]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied, sorted(packages - copied)
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in packages | {"pyproject.toml", "README.md"}:
        assert not any(fnmatch.fnmatch(name, pat) for pat in ignored), f".dockerignore drops {name}"
    for must in (".git", ".venv", "radnode-data"):
        assert must in ignored, f".dockerignore should exclude {must}"


# -- docker-compose.yml -----------------------------------------------------------

COMPOSE_TEST_ENV = {
    "POSTGRES_PASSWORD": "pg-secret-for-tests",
    "ORTHANC_PASSWORD": "orthanc-secret",
    "RADNODE_API_TOKENS": '{"api-token-for-tests": "admin"}',
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def is_ohif(svc: dict[str, Any]) -> bool:
    """The viewer's service: the Dockerfile's ``ohif`` target, not a node role."""
    build = svc.get("build")
    return isinstance(build, dict) and build.get("target") == "ohif"


def radnode_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if ("build" in svc or str(svc.get("image", "")).startswith("radnode")) and not is_ohif(svc)
    }


def test_compose_runs_each_role_once(compose: dict[str, Any]) -> None:
    services = radnode_services(compose)
    roles = []
    for name, svc in services.items():
        command = svc.get("command")
        assert isinstance(command, list), f"{name}: command should be an exec-form list"
        assert command_problems(command) == [], name
        roles.append(command[-1] if command[0] != "radnode" else command[1])
    assert sorted(roles) == sorted(ROLES)
    assert ROLES <= subcommands()


def test_compose_has_no_profiles(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "profiles" not in svc, f"{name} is not started by a plain `docker compose up`"
    assert {"postgres", "orthanc"} <= set(compose["services"])


def test_compose_radnode_vars_are_settings_fields(compose: dict[str, Any]) -> None:
    assert unknown_radnode_vars(RADNODE_VAR.findall(COMPOSE.read_text())) == []
    for name, svc in radnode_services(compose).items():
        assert unknown_radnode_vars(env_mapping(svc.get("environment"))) == [], name


def test_compose_settings_validate_and_share_data(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    volumes = set(compose.get("volumes") or {})
    for name, svc in radnode_services(compose).items():
        env = interpolate_tree(env_mapping(svc.get("environment")), COMPOSE_TEST_ENV)
        settings = settings_from_env(env, monkeypatch)
        assert str(settings.data_dir) == "/data" and settings.host == "0.0.0.0", name
        assert (settings.database_url or "").startswith("postgresql+psycopg://"), name
        mounts = [str(v).split(":") for v in svc.get("volumes", [])]
        data_mounts = [m[0] for m in mounts if len(m) > 1 and m[1] == str(settings.data_dir)]
        assert data_mounts == ["radnode-data"], f"{name}: {mounts}"
    assert "radnode-data" in volumes


def test_compose_database_url_matches_postgres(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    postgres = compose["services"]["postgres"]
    assert str(postgres["image"]).split(":")[1].split(".")[0] == "16", postgres["image"]
    assert postgres.get("healthcheck", {}).get("test"), "postgres needs a healthcheck"
    pg_env = interpolate_tree(env_mapping(postgres["environment"]), COMPOSE_TEST_ENV)
    for svc in radnode_services(compose).values():
        env = interpolate_tree(env_mapping(svc["environment"]), COMPOSE_TEST_ENV)
        url = make_url(env["RADNODE_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg"
        assert url.host == "postgres" and url.password == COMPOSE_TEST_ENV["POSTGRES_PASSWORD"]
        assert url.username == pg_env["POSTGRES_USER"] and url.database == pg_env["POSTGRES_DB"]


def test_compose_waits_for_healthy_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def reaches_postgres(name: str, seen: frozenset[str] = frozenset()) -> bool:
        depends = services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dep, spec in depends.items():
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            if dep == "postgres" or (dep not in seen and reaches_postgres(dep, seen | {name})):
                return True
        return False

    for name in radnode_services(compose):
        assert reaches_postgres(name), f"{name} may start before PostgreSQL is ready"


def test_compose_ports_and_healthchecks(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    published: dict[str, set[int]] = {}
    for svc in radnode_services(compose).values():
        env = interpolate_tree(env_mapping(svc["environment"]), COMPOSE_TEST_ENV)
        settings = settings_from_env(env, monkeypatch)
        role = svc["command"][-1]
        published[role] = {int(str(p).split(":")[-1].split("/")[0]) for p in svc.get("ports", [])}
        if role == "scp":
            test = " ".join(svc["healthcheck"]["test"])
            assert str(settings.dicom_port) in test and "/healthz" not in test
        elif role == "worker":
            # The image's HEALTHCHECK probes HTTP, which the worker does not serve: it runs
            # the probe k8s runs (loads its settings, asks the index; tests/k8s run it).
            check = svc["healthcheck"]
            assert not check.get("disable") and check["test"] == ["CMD", *WORKER_PROBE]
            assert check["timeout"] and check["interval"] and check["retries"] >= 1
    assert published == {
        "scp": {field_default("dicom_port")},
        "api": {field_default("http_port")},
        "worker": set(),
    }


WORKER_PROBE = ["python", "-m", "radnode.probe"]


def test_compose_worker_probe_is_the_k8s_one() -> None:
    [worker] = [
        doc
        for doc in yaml.safe_load_all((REPO / "k8s" / "base" / "worker.yaml").read_text())
        if doc and doc.get("kind") == "Deployment"
    ]
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["exec"]["command"] == WORKER_PROBE


def dockerfile_stage(name: str) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"] + [len(instructions)]
    for begin, end in zip(starts, starts[1:], strict=False):
        if instructions[begin][1].split()[-1] == name:
            return instructions[begin:end]
    raise AssertionError(f"the Dockerfile has no stage {name!r}")


def test_dockerfile_ohif_stage_runs_radnode_viewer() -> None:
    stage = dockerfile_stage("ohif")
    [entrypoint] = [json.loads(args) for kw, args in stage if kw == "ENTRYPOINT"]
    assert entrypoint[:2] == ["radnode", "viewer"]
    build_parser().parse_args(entrypoint[1:])
    assert exposed_ports(stage) == {field_default("ohif_port")}
    [check] = [args for kw, args in stage if kw == "HEALTHCHECK"]
    assert "/viewer/app-config.js" in check and "RADNODE_OHIF_PORT" in check
    users = [args for kw, args in stage if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_compose_serves_the_viewer_beside_the_api(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlsplit

    [(name, ohif)] = [(n, s) for n, s in compose["services"].items() if is_ohif(s)]
    dockerfile_stage(ohif["build"]["target"])  # the target exists
    assert "profiles" not in ohif
    command = interpolate_tree(ohif["command"], COMPOSE_TEST_ENV)
    args = build_parser().parse_args(["viewer", *command])
    api_name, api = next(
        (n, s) for n, s in radnode_services(compose).items() if s["command"][-1] == "api"
    )
    assert ohif["depends_on"] == {api_name: {"condition": "service_healthy"}}
    api_settings = settings_from_env(
        interpolate_tree(env_mapping(api["environment"]), COMPOSE_TEST_ENV), monkeypatch
    )
    assert args.upstream == f"http://{api_name}:{api_settings.http_port}"
    [ohif_port] = ohif["ports"]
    assert str(ohif_port).split(":")[-1] == str(field_default("ohif_port"))
    # the review page embeds the viewer where browsers reach it, and the viewer lets it
    viewer = urlsplit(api_settings.ohif_url or "")
    assert viewer.path == "/viewer" and viewer.port == int(str(ohif_port).split(":")[0])
    review = urlsplit(args.frame_ancestors)
    assert review.hostname == viewer.hostname  # the session cookie is per host
    [api_port] = api["ports"]
    assert review.port == int(str(api_port).split(":")[0]), name


def test_compose_has_no_literal_secrets(compose: dict[str, Any]) -> None:
    assert literal_secrets(compose) == []
    # Required variables really are required: compose refuses to start without them.
    with pytest.raises(KeyError):
        interpolate_tree(compose, {})


def test_compose_orthanc_has_dicomweb_and_knows_radnode(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    orthanc = compose["services"]["orthanc"]
    assert str(orthanc["image"]).startswith("orthancteam/orthanc:"), (
        "pin an orthancteam/orthanc tag"
    )
    env = env_mapping(orthanc.get("environment"))
    config: dict[str, Any] = {}
    for volume in orthanc.get("volumes", []):
        source = str(volume).split(":")[0]
        if source.startswith("."):
            path = (REPO / source).resolve()
            assert path.is_file(), f"orthanc mounts a missing file {source}"
            config |= json.loads(path.read_text())
    assert env.get("DICOM_WEB_PLUGIN_ENABLED") == "true" or config.get("DicomWeb", {}).get("Enable")
    scp_name, scp = next(
        (n, s) for n, s in radnode_services(compose).items() if s["command"][-1] == "scp"
    )
    settings = settings_from_env(
        interpolate_tree(env_mapping(scp["environment"]), COMPOSE_TEST_ENV), monkeypatch
    )
    radnode = config["DicomModalities"]["radnode"]
    if isinstance(radnode, dict):  # the object form, with per-modality permissions
        radnode = [radnode["AET"], radnode["Host"], radnode["Port"]]
    assert radnode == [settings.ae_title, scp_name, settings.dicom_port]
    allowed = {entry.partition("@")[0] for entry in settings.allowed_calling_aets}
    assert not allowed or config["DicomAet"] in allowed, "radnode-scp would refuse Orthanc"


def test_orthanc_config_is_the_pacs_radnode_expects(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/orthanc/orthanc.json (compose and the integration tests both use it):
    authentication on, DICOMweb on, a short StableAge, stores only from registered
    modalities, radnode allowed to store; every radnode role knows this Orthanc as its
    PACS peer by service name and ports, with the password compose gives Orthanc."""
    config = json.loads((REPO / "deploy" / "orthanc" / "orthanc.json").read_text())
    assert config["AuthenticationEnabled"] is True and config["DicomWeb"]["Enable"] is True
    assert 0 < config["StableAge"] <= 5
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomModalities"]["radnode"]["AllowStore"] is True
    orthanc = compose["services"]["orthanc"]
    assert orthanc["healthcheck"]["test"], "orthanc needs a healthcheck"
    orthanc_env = interpolate_tree(env_mapping(orthanc["environment"]), COMPOSE_TEST_ENV)
    users = json.loads(orthanc_env["ORTHANC__REGISTERED_USERS"])
    assert orthanc_env["ORTHANC__POSTGRESQL__HOST"] == "postgres"
    for name, svc in radnode_services(compose).items():
        env = interpolate_tree(env_mapping(svc["environment"]), COMPOSE_TEST_ENV)
        [peer] = settings_from_env(env, monkeypatch).pacs_peers
        assert peer.dicomweb_url == f"http://orthanc:{config['HttpPort']}/dicom-web", name
        assert (peer.host, peer.port, peer.ae_title) == (
            "orthanc",
            config["DicomPort"],
            config["DicomAet"],
        )
        assert peer.password is not None and peer.username is not None
        assert users[peer.username] == peer.password.get_secret_value()


def test_compose_config_with_debian_docker_compose() -> None:
    """`docker-compose config` (Debian's docker-compose parses without an engine)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run `make system-deps` (make test does)")
    result = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={**COMPOSE_TEST_ENV, "PATH": "/usr/bin:/bin"},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_compose_config_when_docker_compose_is_installed() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("docker compose is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={**COMPOSE_TEST_ENV, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


# The Kubernetes manifests (k8s/) are checked in tests/k8s/test_k8s_manifests.py.


# -- the checkers can fail ----------------------------------------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        {"POSTGRES_PASSWORD": "hunter2"},
        {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-hunter2}"},
        {"environment": ["POSTGRES_PASSWORD=hunter2"]},
        {"RADNODE_DATABASE_URL": "postgresql+psycopg://radnode:hunter2@postgres/radnode"},
        {"RADNODE_DATABASE_URL": "postgresql+psycopg://${U:-radnode}:${P:-hunter2}@postgres/db"},
        {"ORTHANC__REGISTERED_USERS": '{"radnode": "hunter2"}'},
    ],
)
def test_literal_secret_checker_reports(snippet: dict[str, Any]) -> None:
    assert literal_secrets({"services": {"x": {"environment": snippet}}})


@pytest.mark.parametrize(
    "snippet",
    [
        {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it}"},
        {"RADNODE_DATABASE_URL": "postgresql+psycopg://${U:-radnode}:${P}@postgres/db"},
        {"ORTHANC__REGISTERED_USERS": '{"${U:-radnode}": "${ORTHANC_PASSWORD:?set it}"}'},
    ],
)
def test_literal_secret_checker_accepts_required_variables(snippet: dict[str, Any]) -> None:
    assert literal_secrets({"environment": snippet}) == []


@pytest.mark.parametrize(
    "argv", [["serv"], ["radnode", "nope"], ["api", "--bogus"], ["synth", "study"], []]
)
def test_command_checker_reports(argv: list[str]) -> None:
    assert command_problems(argv)


def test_variable_checker_reports_typos() -> None:
    assert unknown_radnode_vars(["RADNODE_DICOM_PROT", "RADNODE_HOST", "RADNODE_CONFIG"]) == [
        "RADNODE_DICOM_PROT"
    ]


def test_dockerfile_parser_reads_continuations() -> None:
    stage = final_stage(
        dockerfile_instructions("FROM a AS b\nFROM c\n# x\nEXPOSE 104 \\\n  8080/tcp\n")
    )
    assert stage[0] == ("FROM", "c") and exposed_ports(stage) == {104, 8080}


# -- docs ---------------------------------------------------------------------------

TABLE_START = (
    "<!-- settings-table:start (generated: .venv/bin/python -m tests.test_deploy_files) -->"
)
TABLE_END = "<!-- settings-table:end -->"

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        metadata = [m for e in extras for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _type_text(base) + _constraint_text(metadata)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        every = typing.get_args(annotation)
        args = [a for a in every if a is not type(None)]
        optional = " (optional)" if len(args) < len(every) else ""
        return " or ".join(_type_text(a) for a in args) + optional
    if origin is list:
        return f"list of {_type_text(typing.get_args(annotation)[0])}"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(info: FieldInfo) -> str:
    return _constraint_text(info.metadata)


def _constraint_text(metadata: list[Any]) -> str:
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            words.append(f"length >= {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"length <= {item.max_length}")
    return f" ({', '.join(words)})" if words else ""


def _default_text(name: str) -> str:
    value = field_default(name)
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def cli_flags() -> dict[str, str]:
    """Settings field -> the flag of `radnode serve` (and scp, api, worker) that sets it."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve = action.choices["serve"]
            return {a.dest: a.option_strings[-1] for a in serve._actions if a.dest in FIELDS}
    return {}


def settings_table() -> str:
    flags = cli_flags()
    rows = [
        "| Setting | Environment variable | Flag | Type | Default | Description |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in FIELDS.items():
        description = (info.description or "").replace("|", "\\|")
        flag = f"`{flags[name]}`" if name in flags else ""
        rows.append(
            f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {flag} "
            f"| {_type_text(info.annotation)}{_constraints(info)} | {_default_text(name)} "
            f"| {description} |"
        )
    return "\n".join(rows)


def render_configuration_doc(text: str) -> str:
    before, start, rest = text.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    assert start and end, f"docs/configuration.md lacks the {TABLE_START} ... {TABLE_END} markers"
    return f"{before}{TABLE_START}\n{settings_table()}\n{TABLE_END}{after}"


def test_configuration_doc_table_matches_settings() -> None:
    text = CONFIG_DOC.read_text()
    assert render_configuration_doc(text) == text, (
        "docs/configuration.md is out of date: run .venv/bin/python -m tests.test_deploy_files"
    )
    for name in FIELDS:
        assert f"`{ENV_PREFIX}{name.upper()}`" in text and f"`{name}`" in text


def test_every_setting_is_described() -> None:
    assert [n for n, info in FIELDS.items() if not info.description] == []


def test_configuration_doc_toml_example_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", CONFIG_DOC.read_text(), re.DOTALL)
    assert blocks, "docs/configuration.md has no TOML example"
    settings_from_env({}, monkeypatch)
    monkeypatch.delenv("RADNODE_CONFIG", raising=False)
    for block in blocks:
        path = tmp_path / "radnode.toml"
        path.write_text(block)
        settings = Settings.load(path)  # extra="forbid": an unknown key fails here
        assert set(tomllib.loads(block)) <= set(FIELDS)
        assert settings.model_dump(include=set(tomllib.loads(block)))


def test_deployment_doc_covers_each_mode() -> None:
    text = DEPLOY_DOC.read_text()
    needles = ("make run", "docker compose up", "kubectl apply -k k8s/overlays/", "k8s/README.md")
    for needle in needles:
        assert needle in text, needle
    for role in sorted(SERVER_COMMANDS):
        assert f"radnode {role}" in text, role


if __name__ == "__main__":
    CONFIG_DOC.write_text(render_configuration_doc(CONFIG_DOC.read_text()))
    print(f"updated {CONFIG_DOC.relative_to(REPO)}")
