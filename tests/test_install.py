"""The lock files against pyproject.toml: `make install` installs requirements.lock and
the Dockerfile requirements-runtime.lock, and nothing else (``pip install
--require-hashes``), so a requirement missing from them, or pinned outside the range
pyproject.toml asks for, must fail here rather than on a fresh machine.

Nothing here reaches the package index: the lock and pyproject.toml are read as text.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
REFRESH = "run `make lock` and commit requirements.lock and requirements-runtime.lock"


def _locked(lock: Path = LOCK) -> dict[str, tuple[Requirement, list[str]]]:
    """Each entry of a lock by canonical name: its requirement and its sha256 hashes."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        requirement = Requirement(words[0])
        hashes = [w.removeprefix("--hash=sha256:") for w in words[1:] if w.startswith("--hash=")]
        entries[canonicalize_name(requirement.name)] = (requirement, hashes)
    return entries


def _pinned_version(requirement: Requirement) -> str | None:
    specs = list(requirement.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def _declared(lock: Path) -> list[tuple[str, Requirement]]:
    """Every requirement pyproject.toml declares for a lock, with where: what `make lock`
    resolves into it."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    sections = {
        "[project] dependencies": pyproject["project"]["dependencies"],
        "[build-system] requires": pyproject["build-system"]["requires"],
    }
    if lock == LOCK:
        sections["the test extra"] = pyproject["project"]["optional-dependencies"]["test"]
    return [(where, Requirement(r)) for where, reqs in sections.items() for r in reqs]


@pytest.mark.parametrize("lock", [LOCK, RUNTIME_LOCK], ids=lambda p: p.name)
def test_the_lock_pins_every_entry_with_hashes(lock: Path) -> None:
    locked = _locked(lock)
    assert locked, f"{lock.name} lists no package: {REFRESH}"
    unpinned = [str(r) for r, _ in locked.values() if _pinned_version(r) is None]
    unhashed = [str(r) for r, hashes in locked.values() if not hashes]
    assert not unpinned and not unhashed, (
        f"{lock.name} has entries without `==` {unpinned} or without a "
        f"--hash=sha256: {unhashed}: {REFRESH}"
    )


@pytest.mark.parametrize("lock", [LOCK, RUNTIME_LOCK], ids=lambda p: p.name)
def test_every_requirement_in_pyproject_is_locked(lock: Path) -> None:
    locked = _locked(lock)
    problems = []
    for where, requirement in _declared(lock):
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement} ({where}) is not in it")
            continue
        version = _pinned_version(locked[name][0])
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} ({where}) is locked at {locked[name][0]}")
    assert not problems, (
        f"{lock.name} does not match pyproject.toml:\n  " + "\n  ".join(problems) + f"\n{REFRESH}"
    )


def test_the_runtime_lock_is_the_locks_pins_less_the_test_extra() -> None:
    """The image runs what the tests ran: same versions, same hashes."""
    locked = {name: (str(r), set(h)) for name, (r, h) in _locked(LOCK).items()}
    runtime = {name: (str(r), set(h)) for name, (r, h) in _locked(RUNTIME_LOCK).items()}
    differ = sorted(name for name in runtime if runtime[name] != locked.get(name))
    assert not differ, (
        f"requirements-runtime.lock differs from requirements.lock in {differ}: {REFRESH}"
    )


def test_the_image_installs_the_lock_with_the_makefiles_pip() -> None:
    """The Dockerfile and `make install` install the same lock with the same pip."""
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    [pip_version] = re.findall(r"^PIP_VERSION\s*:=\s*(\S+)$", makefile, re.MULTILINE)
    assert f"pip=={pip_version}" in dockerfile, f"the Dockerfile should install pip {pip_version}"
    assert "--require-hashes -r requirements-runtime.lock" in dockerfile
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(fnmatch.fnmatch(RUNTIME_LOCK.name, pattern) for pattern in ignored)
