"""The model registry: a folder of versions per task, and the active version of each.

Layout::

    <root>/<task>/<version>/model.keras
    <root>/<task>/<version>/model_card.json
    <root>/<task>/ACTIVE            one line: the active version

The default root is the models shipped inside the package (``ai_node/models``);
``Settings.models_dir`` points elsewhere. :class:`ModelSet` hands the worker the
active model of each task, loads it on first use and reloads it when ``ACTIVE``
changes, so ``radnode model activate`` takes effect without a restart.

A registry folder elsewhere (a shared volume) is seeded once from the shipped models with
``python -m ai_node.registry seed`` (the Kubernetes pods' init container): each task
folder it lacks is copied (to a temporary name, then renamed, so pods that start together
on a shared volume never see half a copy); a task already there is left as it is.

Switching the active version holds an exclusive POSIX lock on ``<task>/.lock``
(``fcntl.lockf``, which NFS honours), so a compare-and-switch
(:meth:`ModelRegistry.activate` with ``expected``) is atomic across processes and pods.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ai_node.models import TASKS, LoadedModel, load_model
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RegistryError(ValueError):
    """A task or version that does not exist, or a malformed registry entry."""


class ActiveChanged(RegistryError):
    """The active version is no longer the one a switch was based on."""


_SWITCH_LOCK = threading.Lock()
"""In-process half of the switch lock (POSIX record locks do not exclude threads)."""


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise RegistryError(
            f"version must be 1-64 characters of letters, digits, '.', '_' or '-': {version!r}"
        )
    return version


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise RegistryError(f"task must be one of {TASKS}, got {task!r}")
    return task


class ModelRegistry:
    """Versions and active version per task under one folder."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else SHIPPED_MODELS

    def seed(self, source: Path = SHIPPED_MODELS) -> list[str]:
        """Copy the models of each task this registry lacks from ``source``; returns the
        tasks copied (none when every task is there already)."""
        seeded: list[str] = []
        for task in TASKS:
            target, origin = self.root / task, source / task
            if target.exists() or not origin.is_dir():
                continue
            tmp = self.root / f".{task}.seed-{os.getpid()}-{threading.get_ident()}"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(origin, tmp, ignore=shutil.ignore_patterns("__pycache__"))
                os.replace(tmp, target)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target.is_dir():  # else another process seeded it first
                    logger.warning(
                        "cannot seed the model registry",
                        extra={"task": task, "root": str(self.root), "error": str(exc)},
                    )
                continue
            seeded.append(task)
            logger.info("model registry seeded", extra={"task": task, "root": str(self.root)})
        return seeded

    def version_dir(self, task: str, version: str) -> Path:
        return self.root / _check_task(task) / check_version(version)

    def versions(self, task: str) -> list[str]:
        folder = self.root / _check_task(task)
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if p.is_dir() and (p / "model.keras").is_file()
        )

    def _active_file(self, task: str) -> Path:
        return self.root / _check_task(task) / "ACTIVE"

    def active_version(self, task: str) -> str:
        """The version named in ``ACTIVE``, else the last version in sort order."""
        path = self._active_file(task)
        if path.is_file():
            version = path.read_text().strip()
            if version:
                return check_version(version)
        versions = self.versions(task)
        if not versions:
            raise RegistryError(f"no {task} model in {self.root}")
        return versions[-1]

    def active_marker(self, task: str) -> tuple[str, float]:
        """What decides the active version (cheap to poll): the version and ACTIVE's mtime."""
        path = self._active_file(task)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        return self.active_version(task), mtime

    @contextlib.contextmanager
    def _switch_lock(self, task: str) -> Iterator[None]:
        """Exclusive hold on the task's active version, across threads and processes."""
        path = self.root / _check_task(task) / ".lock"
        with _SWITCH_LOCK, path.open("a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)

    def activate(self, task: str, version: str, expected: str | None = None) -> None:
        """Make ``version`` the active one (atomically: write, fsync, rename). With
        ``expected``, only if the active version is still that one (checked and switched
        under the task's lock), else :class:`ActiveChanged`."""
        if version not in self.versions(task):
            raise RegistryError(f"no {task} model version {version!r} in {self.root}")
        with self._switch_lock(task):
            if expected is not None:
                current = self.active_version(task)
                if current != expected:
                    raise ActiveChanged(
                        f"the active {task} model is {current!r}, no longer {expected!r} "
                        f"(activated by someone else since): {version!r} not activated"
                    )
            self._write_active(task, version)

    def _write_active(self, task: str, version: str) -> None:
        path = self._active_file(task)
        tmp = path.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
        with tmp.open("w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        logger.info("model activated", extra={"task": task, "version": version})

    def card(self, task: str, version: str) -> dict[str, Any]:
        path = self.version_dir(task, version) / "model_card.json"
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable model card {path}: {exc}") from exc
        if not isinstance(card, dict):
            raise RegistryError(f"model card {path} is not a JSON object")
        return card

    def save(self, task: str, version: str, keras_model: Any, card: dict[str, Any]) -> Path:
        """Write a new version (refuses to overwrite one)."""
        folder = self.version_dir(task, version)
        if folder.exists():
            raise RegistryError(f"{task} version {version!r} already exists in {self.root}")
        folder.mkdir(parents=True)
        keras_model.save(folder / "model.keras")
        (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        return folder

    def set_card(self, task: str, version: str, card: dict[str, Any]) -> None:
        """Replace a version's model card (atomically)."""
        path = self.version_dir(task, version) / "model_card.json"
        tmp = path.with_name(f".model_card.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, path)

    def register(
        self,
        task: str,
        version: str,
        model_file: Path,
        card: dict[str, Any],
        activate: bool,
        expected_active: str | None = None,
    ) -> Path:
        """Add a trained model file as a new version (the retraining pipeline's promote
        step); activate it only if asked, and with ``expected_active`` only if that is
        still the active version (else it stays registered, inactive, and
        :class:`ActiveChanged` is raised). ``ACTIVE`` is written first when missing, so
        an inactive newcomer never becomes active by sorting last."""
        folder = self.version_dir(task, version)
        if folder.exists():
            raise RegistryError(f"{task} version {version!r} already exists in {self.root}")
        if self.versions(task):
            with self._switch_lock(task):
                if not self._active_file(task).is_file():
                    self._write_active(task, self.active_version(task))
        tmp = folder.with_name(f".{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(model_file, tmp / "model.keras")
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, folder)
        if activate:
            self.activate(task, version, expected=expected_active)
        return folder

    def describe(self) -> list[dict[str, Any]]:
        """Every version of every task with its card's metrics and promotion record."""
        out: list[dict[str, Any]] = []
        for task in TASKS:
            try:
                active = self.active_version(task)
            except RegistryError:
                active = None
            for version in self.versions(task):
                try:
                    card = self.card(task, version)
                except RegistryError:
                    card = {}
                out.append(
                    {
                        "task": task,
                        "version": version,
                        "active": version == active,
                        "date": card.get("date"),
                        "metrics": card.get("metrics", {}),
                        "promotion": card.get("promotion"),
                    }
                )
        return out


class ModelSet:
    """The worker's models: loaded lazily, reused across jobs, reloaded on activation."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[tuple[str, float], LoadedModel]] = {}

    def get(self, task: str) -> LoadedModel:
        marker = self.registry.active_marker(task)
        with self._lock:
            cached = self._loaded.get(task)
            if cached is not None and cached[0][0] == marker[0]:
                return cached[1]
            version = marker[0]
            model = load_model(
                task,
                version,
                self.registry.version_dir(task, version) / "model.keras",
                self.registry.card(task, version),
            )
            if cached is not None:
                logger.info(
                    "active model changed, reloaded",
                    extra={"task": task, "from": cached[1].version, "to": version},
                )
            self._loaded[task] = (marker, model)
            return model


def main(args: list[str] | None = None) -> int:
    """``python -m ai_node.registry seed [--models-dir PATH]``: seed the registry folder
    (default: the settings' models_dir) from the shipped models. Exit 0 when every task
    has a model afterwards, 2 when models_dir is unset, 1 when a task is still missing."""

    parser = argparse.ArgumentParser(prog="python -m ai_node.registry")
    parser.add_argument("command", choices=["seed"])
    parser.add_argument("--models-dir", type=Path, help="default: settings models_dir")
    ns = parser.parse_args(args)
    root = ns.models_dir
    if root is None:
        root = Settings.load().models_dir
    if root is None:
        print("models_dir (RADNODE_MODELS_DIR) is not set: nothing to seed", file=sys.stderr)
        return 2
    registry = ModelRegistry(root)
    seeded = registry.seed()
    missing = [task for task in TASKS if not registry.versions(task)]
    done, lacking = ", ".join(seeded) or "nothing", ", ".join(missing) or "none"
    print(f"{root}: seeded {done}; missing {lacking}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
