"""The commands the viewer's pages and docs name exist and do what they say: ``radnode
viewer`` serves OHIF at /viewer/; ``radnode serve`` refuses an ``ohif_dir`` with no viewer;
every ``make`` target and ``radnode`` subcommand the review pages name is real."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from radnode.cli import build_parser
from tests.support.processes import free_port, stop_process, wait_port
from tests.support.radnode_process import RADNODE, REPO
from tests.support.viewer import stand_in_ohif

STATIC = REPO / "viewer_plugin" / "review" / "static"


def test_commands_named_by_the_pages_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = [
        command
        for page in sorted(STATIC.rglob("*"))
        if page.is_file() and page.suffix in (".html", ".js")
        for command in re.findall(r"<code>((?:make|radnode) [^<]+)</code>", page.read_text())
    ]
    assert named, "the pages name no command (the review page's no-viewer hint does)"
    for command in named:
        tool, *words = command.split()
        if tool == "make":
            assert set(words) <= targets, command
        else:
            build_parser().parse_args(words)  # SystemExit if radnode has no such command


def test_radnode_viewer_serves_ohif_at_viewer(tmp_path: Path) -> None:
    dist = stand_in_ohif(tmp_path / "dist")
    port = free_port()
    command = [
        *RADNODE,
        "viewer",
        "--dist",
        str(dist),
        "--port",
        str(port),
        "--upstream",
        "http://127.0.0.1:9",
    ]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            config = c.get("/viewer/app-config.js")
            assert config.status_code == 200 and "/viewer/dicom-web" in config.text
            assert 'src="/viewer/probe.js"' in c.get("/viewer/").text
            assert c.get("/viewer/dicom-web/studies").status_code == 502  # no radnode at :9
    finally:
        stop_process(proc)


def test_missing_viewer_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-dist"
    viewer = subprocess.run(
        [*RADNODE, "viewer", "--dist", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert viewer.returncode == 2 and "make ohif" in viewer.stderr
    serve = subprocess.run(
        [
            *RADNODE,
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--http-port",
            str(free_port()),
            "--dicom-port",
            str(free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RADNODE_OHIF_DIR": str(missing)},
    )
    assert serve.returncode == 2 and "make ohif" in serve.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started
