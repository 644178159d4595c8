"""The installed product stands alone: a wheel installed outside the checkout serves a
study to its SR, with the shipped models and the schema migrations found as package
data, and nothing in it refers to the source checkout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.support.processes import free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"radnode", "radnode_core", "dimse_scp", "dicomweb", "ai_node", "pacs_link",
            "viewer_plugin"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO)],
        check=True, cwd=out, timeout=300,
    )
    [built] = out.glob("radnode-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the checkout with only the wheel installed; the
    third-party dependencies come from this interpreter's site-packages (a path entry, so
    no .pth file there, the checkout's editable install among them, is read)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, cwd=root, timeout=300,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site) / "radnode_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADNODE_", "PYTHON"))}
    env["TCP_NODELAY"] = "1"
    return env


def test_the_wheel_holds_the_product_and_no_harness(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("radnode-")}
    assert tops == PACKAGES
    assert any(n.startswith("ai_node/models/finding/") and n.endswith("model.keras")
               for n in names)
    assert any(n.startswith("radnode_core/migrations/versions/") for n in names)
    assert any(n.startswith("viewer_plugin/review/static/") for n in names)
    for name in names:
        if name.endswith(".py"):
            text = zipfile.ZipFile(wheel).read(name).decode()
            assert not re.search(r"^\s*(from|import) (tests|benchmarks)\b", text, re.M), name


def test_installed_wheel_serves_a_study_to_its_sr(venv: Path, tmp_path: Path) -> None:
    radnode = venv / "bin" / "radnode"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import radnode, radnode_core, ai_node; print(radnode.__file__, ai_node.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=_clean_env(),
    ).stdout
    assert str(REPO) not in where and str(venv) in where

    study_dir = tmp_path / "study"
    subprocess.run(
        [str(radnode), "synth", "study", "--out", str(study_dir), "--slices", "8",
         "--size", "128", "--nodules", "1", "--seed", "3"],
        check=True, cwd=tmp_path, env=_clean_env(), timeout=120,
    )
    study_uid = json.loads((study_dir / "truth.json").read_text())["study_instance_uid"]
    dicom_port, http_port = free_port(), free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(radnode), "serve", "--data-dir", str(tmp_path / "data"),
         "--dicom-port", str(dicom_port), "--http-port", str(http_port)],
        cwd=tmp_path, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(dicom_port, proc)
        wait_port(http_port, proc)
        subprocess.run(
            [str(radnode), "send", "--port", str(dicom_port), str(study_dir)],
            check=True, cwd=tmp_path, env=_clean_env(), timeout=120,
        )
        url = f"http://127.0.0.1:{http_port}/api/studies/{study_uid}/result"
        deadline = time.monotonic() + 180
        while True:
            with urllib.request.urlopen(url, timeout=10) as response:
                result = json.load(response)
            if result["status"] in ("done", "failed", "out_of_scope"):
                break
            assert time.monotonic() < deadline, f"no result after 180 s: {result}"
            time.sleep(0.5)
        assert result["status"] == "done", result
        sr_uid = result["sr_sop_instance_uid"]
        qido = (f"http://127.0.0.1:{http_port}/dicom-web/studies/{study_uid}/instances"
                f"?SOPInstanceUID={sr_uid}")
        with urllib.request.urlopen(qido, timeout=10) as response:
            [found] = json.load(response)
        assert found["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.88.34"]
    finally:
        stop_process(proc)
        log.close()
    assert str(REPO) not in (tmp_path / "serve.log").read_text()
