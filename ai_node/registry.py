"""The model registry: the imported model packages, their versions, and which is active.

Layout::

    <root>/<name>/<version>/model.yaml      the card (ai_node.card)
    <root>/<name>/<version>/<model_file>    model.keras, model.h5 or a SavedModel folder
    <root>/<name>/<version>/entry.json      how it got here: when, by whom, from where,
                                            its sha256, whether its code was trusted
    <root>/<name>/ACTIVE                    one line: the active version; empty: none

A name without ``ACTIVE`` (a registry made before there was one) has its last version in
sort order active; adding a version writes ``ACTIVE`` first, so nothing becomes active
unless activated. A version is immutable: it is written once, to a temporary folder
that is renamed into place, and importing the same name and version again with other
bytes is refused (:mod:`ai_node.package`).

The default root is the models shipped inside the package (``ai_node/models``);
``Settings.models_dir`` points elsewhere. :class:`ModelSet` hands the worker the active
model of each name, loads it on first use (after checking the model file's sha256 against
its card) and reloads it when ``ACTIVE`` changes, so ``radnode model activate`` takes
effect without a restart.

A registry folder elsewhere (a shared volume) is seeded once from the shipped models with
``python -m ai_node.registry seed`` (the Kubernetes pods' init container): each name it
lacks is copied (to a temporary name, then renamed, so pods that start together on a
shared volume never see half a copy); a name already there is left as it is.

Switching the active version holds an exclusive POSIX lock on ``<name>/.lock``
(``fcntl.lockf``, which NFS honours), so a compare-and-switch
(:meth:`ModelRegistry.activate` with ``expected``) is atomic across processes and pods.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
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

from ai_node.card import (
    CARD_FILE,
    NAME_PATTERN,
    CardError,
    ModelCard,
    dump_card,
    parse_card,
    read_card,
)
from ai_node.models import LoadedModel, load_model
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"

ENTRY_FILE = "entry.json"
CUSTOM_OBJECTS_FILE = "custom_objects.py"
"""Python a package may carry for its model's custom layers: run only when trusted."""

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(NAME_PATTERN)


class RegistryError(ValueError):
    """A name or version that does not exist, or a malformed registry entry."""


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


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"model name must be 1-64 lower case letters, digits, '.', '_' or '-': {name!r}"
        )
    return name


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file; of a SavedModel folder, of its manifest (docs/models.md):
    a line ``<sha256>  <relative path>`` per file, sorted by path."""
    if path.is_dir():
        lines = []
        for item in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
            if item.is_symlink():
                raise RegistryError(f"{item}: links are not allowed in a SavedModel folder")
            lines.append(f"{file_sha256(item)}  {item.relative_to(path).as_posix()}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_custom_objects(folder: Path) -> dict[str, Any]:
    """``CUSTOM_OBJECTS`` of a package's ``custom_objects.py`` (runs its code: trusted only)."""
    path = folder / CUSTOM_OBJECTS_FILE
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location(f"radnode_model_code_{id(path)}", path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects = getattr(module, "CUSTOM_OBJECTS", None)
    if not isinstance(objects, dict):
        raise RegistryError(f"{path}: defines no CUSTOM_OBJECTS dictionary")
    return objects


class ModelRegistry:
    """Model packages by name and version under one folder, and the active version of each."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else SHIPPED_MODELS

    @property
    def is_shipped(self) -> bool:
        return self.root.resolve() == SHIPPED_MODELS.resolve()

    def seed(self, source: Path = SHIPPED_MODELS) -> list[str]:
        """Copy each model this registry lacks from ``source``; returns the names copied
        (none when every one is there already)."""
        seeded: list[str] = []
        for name in ModelRegistry(source).names():
            target, origin = self.root / name, source / name
            if target.exists():
                continue
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{name}.seed-{os.getpid()}-{threading.get_ident()}"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(origin, tmp, ignore=shutil.ignore_patterns("__pycache__", ".lock"))
                os.replace(tmp, target)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target.is_dir():  # else another process seeded it first
                    logger.warning(
                        "cannot seed the model registry",
                        extra={"model": name, "root": str(self.root), "error": str(exc)},
                    )
                continue
            seeded.append(name)
            logger.info("model registry seeded", extra={"model": name, "root": str(self.root)})
        return seeded

    # -- what is there -----------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and self.versions(p.name)
        )

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / check_version(version)

    def versions(self, name: str) -> list[str]:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_dir() and _VERSION.match(p.name) and (p / CARD_FILE).is_file()
        )

    def _active_file(self, name: str) -> Path:
        return self.root / check_name(name) / "ACTIVE"

    def active_or_none(self, name: str) -> str | None:
        """The version named in ``ACTIVE`` (None when it is empty: deactivated), else the
        last version in sort order (None when there is none)."""
        path = self._active_file(name)
        if path.is_file():
            version = path.read_text().strip()
            return check_version(version) if version else None
        versions = self.versions(name)
        return versions[-1] if versions else None

    def active_version(self, name: str) -> str:
        version = self.active_or_none(name)
        if version is None:
            if self.versions(name):
                raise RegistryError(f"model {name!r} is not active in {self.root}")
            raise RegistryError(f"no model {name!r} in {self.root}")
        return version

    def active(self) -> dict[str, str]:
        """Every active model: name -> version."""
        out = {}
        for name in self.names():
            version = self.active_or_none(name)
            if version is not None:
                out[name] = version
        return out

    def active_marker(self, name: str) -> tuple[str | None, float]:
        """What decides the active version (cheap to poll): the version and ACTIVE's mtime."""
        path = self._active_file(name)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        return self.active_or_none(name), mtime

    def model_card(self, name: str, version: str) -> ModelCard:
        path = self.version_dir(name, version) / CARD_FILE
        try:
            return read_card(path)
        except CardError as exc:
            raise RegistryError(f"{name}:{version}: {exc}") from exc

    def card(self, name: str, version: str) -> dict[str, Any]:
        """The card as data (what ``model.yaml`` holds, defaults filled in)."""
        return self.model_card(name, version).as_dict()

    def entry(self, name: str, version: str) -> dict[str, Any]:
        """How a version got here (``entry.json``); the shipped and trained ones have none."""
        path = self.version_dir(name, version) / ENTRY_FILE
        if not path.is_file():
            return {"source": "radnode", "trust_code": False}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable registry entry {path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def model_path(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / self.model_card(name, version).model_file

    # -- switching ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _switch_lock(self, name: str) -> Iterator[None]:
        """Exclusive hold on the model's active version, across threads and processes."""
        path = self.root / check_name(name) / ".lock"
        with _SWITCH_LOCK, path.open("a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)

    def activate(self, name: str, version: str, expected: str | None = None) -> None:
        """Make ``version`` the active one (atomically: write, fsync, rename). With
        ``expected``, only if the active version is still that one (checked and switched
        under the model's lock), else :class:`ActiveChanged`."""
        if version not in self.versions(name):
            raise RegistryError(f"no {name} model version {version!r} in {self.root}")
        with self._switch_lock(name):
            if expected is not None:
                current = self.active_or_none(name)
                if current != expected:
                    raise ActiveChanged(
                        f"the active {name} model is {current!r}, no longer {expected!r} "
                        f"(activated by someone else since): {version!r} not activated"
                    )
            self._write_active(name, version)

    def deactivate(self, name: str) -> str | None:
        """No version of ``name`` is active any more; returns the one that was."""
        if not self.versions(name):
            raise RegistryError(f"no model {name!r} in {self.root}")
        with self._switch_lock(name):
            before = self.active_or_none(name)
            self._write_active(name, "")
        return before

    def _write_active(self, name: str, version: str) -> None:
        _write_atomic(self._active_file(name), version + "\n" if version else "")
        if version:
            logger.info("model activated", extra={"model": name, "version": version})
        else:
            logger.info("model deactivated", extra={"model": name})

    # -- writing versions ----------------------------------------------------------------

    def _stage(self, name: str, version: str) -> Path:
        folder = self.version_dir(name, version)
        if folder.exists():
            raise RegistryError(f"{name} version {version!r} already exists in {self.root}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{version}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def _card_for(
        self, name: str, version: str, card: dict[str, Any], model: Path, inherit: bool = True
    ) -> ModelCard:
        """``card`` as a valid card of ``name``:``version`` for the model file ``model``: with
        ``inherit``, what it does not state is the active (else newest) version's; sha256 is
        computed."""
        base: dict[str, Any] = {}
        versions = self.versions(name) if inherit else []
        reference = (self.active_or_none(name) or versions[-1]) if versions else None
        if reference is not None:
            base = self.card(name, reference)
        data = {**base, **card, "name": name, "version": version}
        data["sha256"] = file_sha256(model)
        data["model_file"] = data.get("model_file") or model.name
        try:
            return parse_card(data, f"{name}:{version} {CARD_FILE}")
        except CardError as exc:
            raise RegistryError(str(exc)) from exc

    def install(self, staged: Path, name: str, version: str) -> Path:
        """Rename a fully written version folder (under this root) into place."""
        folder = self.version_dir(name, version)
        if folder.exists():
            raise RegistryError(f"{name} version {version!r} already exists in {self.root}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not self._active_file(name).is_file():
            # an inactive newcomer must never become active by sorting last (nor by being
            # a new name's only version): ACTIVE names what is active, empty for nothing
            with self._switch_lock(name):
                if not self._active_file(name).is_file():
                    self._write_active(name, self.active_or_none(name) or "")
        os.replace(staged, folder)
        return folder

    def save(self, name: str, version: str, keras_model: Any, card: dict[str, Any]) -> Path:
        """Write a new version from a Keras model in memory (``radnode model train``)."""
        tmp = self._stage(name, version)
        try:
            keras_model.save(tmp / "model.keras")
            full = self._card_for(
                name,
                version,
                {**card, "model_file": "model.keras"},
                tmp / "model.keras",
                inherit=False,
            )
            (tmp / CARD_FILE).write_text(dump_card(full))
            return self.install(tmp, name, version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def set_card(self, name: str, version: str, card: dict[str, Any]) -> None:
        """Replace a version's card (atomically); the model file and its sha256 stay."""
        folder = self.version_dir(name, version)
        current = self.model_card(name, version)
        data = {**card, "name": name, "version": version}
        data["sha256"], data["model_file"] = current.sha256, current.model_file
        try:
            full = parse_card(data, f"{name}:{version} {CARD_FILE}")
        except CardError as exc:
            raise RegistryError(str(exc)) from exc
        _write_atomic(folder / CARD_FILE, dump_card(full))

    def register(
        self,
        name: str,
        version: str,
        model_file: Path,
        card: dict[str, Any],
        activate: bool,
        expected_active: str | None = None,
    ) -> Path:
        """Add a trained model file as a new version (the retraining pipeline's promote
        step): its card is ``card`` over the active version's; activate it only if asked,
        and with ``expected_active`` only if that is still the active version (else it
        stays registered, inactive, and :class:`ActiveChanged` is raised). ``ACTIVE`` is
        written first when missing, so an inactive newcomer never becomes active by
        sorting last."""
        tmp = self._stage(name, version)
        try:
            target = tmp / (card.get("model_file") or model_file.name)
            if model_file.is_dir():
                shutil.copytree(model_file, target)
            else:
                shutil.copyfile(model_file, target)
            full = self._card_for(name, version, {**card, "model_file": target.name}, target)
            (tmp / CARD_FILE).write_text(dump_card(full))
            folder = self.install(tmp, name, version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if activate:
            self.activate(name, version, expected=expected_active)
        return folder

    # -- loading -----------------------------------------------------------------------

    def load(self, name: str, version: str) -> LoadedModel:
        """Load a version for inference: the model file's sha256 must be its card's; the
        package's code (``custom_objects.py``) runs only if trusted at import."""
        card = self.model_card(name, version)
        folder = self.version_dir(name, version)
        path = folder / card.model_file
        if not path.exists():
            raise RegistryError(f"{name}:{version}: {card.model_file} is missing")
        actual = file_sha256(path)
        if actual != card.sha256:
            raise RegistryError(
                f"{name}:{version}: sha256 of {card.model_file} is {actual}, its card says "
                f"{card.sha256}: the model file changed since it was imported; not loaded"
            )
        trusted = bool(self.entry(name, version).get("trust_code"))
        custom = load_custom_objects(folder) if trusted else {}
        return load_model(name, version, path, card, trust_code=trusted, custom_objects=custom)

    def describe(self) -> list[dict[str, Any]]:
        """Every version of every model with its card, entry and whether it is active."""
        out: list[dict[str, Any]] = []
        for name in self.names():
            active = self.active_or_none(name)
            for version in self.versions(name):
                try:
                    card = self.card(name, version)
                except RegistryError as exc:
                    card = {"error": str(exc)}
                out.append(
                    {
                        "name": name,
                        "task": card.get("task"),
                        "version": version,
                        "active": version == active,
                        "modalities": card.get("applicability", {}).get("modalities", []),
                        "date": card.get("date"),
                        "metrics": card.get("metrics", {}),
                        "promotion": card.get("promotion"),
                        "trust_code": bool(self.entry(name, version).get("trust_code")),
                        "card": card,
                    }
                )
        return out


class ModelSet:
    """The worker's models: loaded lazily, once, reused across jobs, reloaded on activation."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[str, LoadedModel]] = {}
        self._cards: dict[tuple[str, str], ModelCard] = {}

    def card(self, name: str, version: str) -> ModelCard:
        key = (name, version)
        card = self._cards.get(key)
        if card is None:
            card = self._cards[key] = self.registry.model_card(name, version)
        return card

    def active_cards(self) -> list[ModelCard]:
        """The cards of the active version of every model (cheap: no model is loaded)."""
        cards = []
        for name, version in self.registry.active().items():
            try:
                cards.append(self.card(name, version))
            except RegistryError as exc:
                logger.error(
                    "active model has a bad card", extra={"model": name, "error": str(exc)}
                )
        return cards

    def get(self, name: str) -> LoadedModel:
        version = self.registry.active_version(name)
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
            model = self.registry.load(name, version)
            if cached is not None:
                logger.info(
                    "active model changed, reloaded",
                    extra={"model": name, "from": cached[1].version, "to": version},
                )
            self._loaded[name] = (version, model)
            return model

    def loaded(self) -> dict[str, LoadedModel]:
        with self._lock:
            return {name: model for name, (_, model) in self._loaded.items()}


def main(args: list[str] | None = None) -> int:
    """``python -m ai_node.registry seed [--models-dir PATH]``: seed the registry folder
    (default: the settings' models_dir) from the shipped models. Exit 0 when every shipped
    model is there afterwards, 2 when models_dir is unset, 1 when one is still missing."""

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
    missing = [n for n in ModelRegistry().names() if not registry.versions(n)]
    done, lacking = ", ".join(seeded) or "nothing", ", ".join(missing) or "none"
    print(f"{root}: seeded {done}; missing {lacking}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
