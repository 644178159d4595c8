"""Model packages: checked before they enter the registry (``radnode model validate`` and
``radnode model import``).

A package is a folder, or a .zip of one, holding ``model.yaml`` (:mod:`ai_node.card`), the
model file it names, and optionally ``custom_objects.py`` (the code of custom layers, a
``CUSTOM_OBJECTS`` dictionary). Each check refuses with :class:`PackageError` naming the
field or file at fault; nothing is written to the registry until every check passed:

1. the card validates (every bad field named);
2. the model file is there, is a ``.keras`` / ``.h5`` file or a SavedModel folder, and its
   sha256 is the card's;
3. code: a Lambda layer, a custom layer, ``custom_objects.py`` or a SavedModel (whose
   graph may hold any TensorFlow op, file access included, and which Keras safe mode does
   not cover) is refused unless the code is trusted (``--trust-code``); the choice is
   recorded in the registry entry and applies every time the model loads;
4. the model loads (Keras safe mode unless trusted); the input shape it declares is the
   card's ``input``;
5. it runs once on a synthetic batch of the card's input shape; its output has a width
   the card's task and labels allow, and its values are probabilities (0..1).

An import copies (or extracts) the package into a temporary folder inside the registry,
checks that copy, and renames it into ``<name>/<version>`` only then, so the registry is
unchanged by any refusal. A version is immutable: importing the same name and version
again is a no-op when the bytes are the same, and refused when they differ.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ai_node.card import CARD_FILE, CardError, ModelCard, read_card
from ai_node.models import model_format, open_model
from ai_node.registry import (
    CUSTOM_OBJECTS_FILE,
    ENTRY_FILE,
    ModelRegistry,
    RegistryError,
    file_sha256,
    load_custom_objects,
)

logger = logging.getLogger(__name__)

MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 8 << 30
"""Limits on a zipped package (entries, uncompressed bytes)."""

SMOKE_BATCH = 2
"""Synthetic inputs the model runs on when checked."""

_PROBABILITY_SLACK = 1e-4


class PackageError(ValueError):
    """A package that cannot be imported; the message names the field or file at fault."""


@dataclass
class CheckReport:
    """What checking a package found (it passed)."""

    card: ModelCard
    folder: Path
    sha256: str
    format: str
    trust_code: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    code: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        c = self.card
        return [
            f"card: {c.key} ({c.task}; {', '.join(c.applicability.modalities)}; "
            f"labels {', '.join(c.outputs.labels)})",
            f"model: {c.model_file} ({self.format}), sha256 {self.sha256} matches the card",
            "code: " + (", ".join(self.code) if self.code else "none (Keras safe mode)"),
            f"ran once: input {self.input_shape} -> output {self.output_shape}",
        ]


# --------------------------------------------------------------------------- opening


def _safe_member(info: zipfile.ZipInfo) -> PurePosixPath:
    name = PurePosixPath(info.filename)
    mode = info.external_attr >> 16
    if name.is_absolute() or ".." in name.parts or ":" in info.filename or "\\" in info.filename:
        raise PackageError(f"zip: unsafe member path {info.filename!r}")
    if stat.S_ISLNK(mode):
        raise PackageError(f"zip: {info.filename!r} is a link; links are not allowed")
    return name


def extract_zip(source: Path, dest: Path) -> None:
    """Extract a zipped package into ``dest`` (refusing absolute paths, '..', links and
    archives over :data:`MAX_ZIP_ENTRIES` entries or :data:`MAX_ZIP_BYTES` bytes)."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"{source.name}: not a zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise PackageError(f"zip: {len(infos)} entries, more than {MAX_ZIP_ENTRIES}")
        if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise PackageError(f"zip: more than {MAX_ZIP_BYTES} bytes uncompressed")
        for info in infos:
            name = _safe_member(info)
            target = dest.joinpath(*name.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _package_root(folder: Path) -> Path:
    """The folder holding model.yaml: ``folder`` itself, or its single subfolder."""
    if (folder / CARD_FILE).is_file():
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / CARD_FILE).is_file():
        return entries[0]
    raise PackageError(f"no card: the package has no {CARD_FILE}")


def copy_package(source: Path, dest: Path) -> Path:
    """Copy (a folder) or extract (a .zip) a package into ``dest``; returns the package's
    folder inside it."""
    if not source.exists():
        raise PackageError(f"{source}: no such file or folder")
    dest.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        for item in source.iterdir():
            if item.is_symlink():
                raise PackageError(f"{item.name}: links are not allowed in a package")
        shutil.copytree(source, dest / "package", symlinks=True)
        return _package_root(dest / "package")
    if zipfile.is_zipfile(source):
        extract_zip(source, dest / "package")
        return _package_root(dest / "package")
    raise PackageError(f"{source.name}: a package is a folder or a .zip of one")


# --------------------------------------------------------------------------- code scan


def _model_config(path: Path, fmt: str) -> dict[str, Any] | None:
    """The model's architecture config (``config.json`` of a .keras file, the
    ``model_config`` attribute of an HDF5 file), read without building anything."""
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                data: Any = json.loads(z.read("config.json"))
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        else:
            return None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return data if isinstance(data, dict) else None


def _builtin_layer(name: str) -> bool:
    import keras

    return name in ("Functional", "Sequential", "Model") or isinstance(
        getattr(keras.layers, name, None), type
    )


def code_in_config(config: dict[str, Any]) -> list[str]:
    """The layers of a model config that run code of their own: Lambda layers and layers
    that are not Keras' built-ins (``class (name)`` each)."""
    found: list[str] = []

    def walk(model: dict[str, Any]) -> None:
        inner = model.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else None
        for layer in layers if isinstance(layers, list) else []:
            if not isinstance(layer, dict):
                continue
            cls = str(layer.get("class_name", ""))
            cfg = layer.get("config")
            label = f"{cls} ({cfg.get('name', '?') if isinstance(cfg, dict) else '?'})"
            if cls == "Lambda":
                found.append(label)
            elif "module" in layer or "registered_name" in layer:  # the Keras 3 format
                module = layer.get("module")
                if not (isinstance(module, str) and module.startswith("keras")):
                    found.append(label)
            elif not _builtin_layer(cls):  # a legacy (Keras 2) config: class names only
                found.append(label)
            walk(layer)

    walk(config)
    return found


# --------------------------------------------------------------------------- checking


def _check_shape(card: ModelCard, declared: tuple[Any, ...] | None) -> None:
    if declared is None:
        return
    size, channels = card.input.size[0], card.input.channels
    want = (size, size, channels)
    got = tuple(declared[1:])
    if len(got) != 3 or any(g is not None and int(g) != w for g, w in zip(got, want, strict=False)):
        raise PackageError(
            f"input.size / input.channels: the model takes {tuple(declared)}, the card says "
            f"{size}x{size}x{channels}"
        )


def _smoke(card: ModelCard, fn: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    size, channels = card.input.size[0], card.input.channels
    rng = np.random.default_rng(0)
    dtype = np.float16 if card.input.dtype == "float16" else np.float32
    x = rng.uniform(0.0, 1.0, (SMOKE_BATCH, size, size, channels)).astype(dtype)
    try:
        out = np.asarray(fn(x), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises refuses it
        raise PackageError(
            f"input: the model does not run on a {x.shape} {card.input.dtype} batch: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    widths = card.output_widths()
    if out.ndim != 2 or out.shape[0] != SMOKE_BATCH or out.shape[1] not in widths:
        allowed = " or ".join(str(w) for w in widths)
        raise PackageError(
            f"outputs: the model's output for a batch of {SMOKE_BATCH} has shape "
            f"{tuple(out.shape)}; a {card.task} card with {len(card.outputs.labels)} labels "
            f"expects ({SMOKE_BATCH}, {allowed})"
        )
    if (
        not np.all(np.isfinite(out))
        or out.min() < -_PROBABILITY_SLACK
        or (out.max() > 1.0 + _PROBABILITY_SLACK)
    ):
        raise PackageError(
            f"outputs: the model's outputs are not probabilities (range {out.min():.3g}.."
            f"{out.max():.3g}): end it with a sigmoid or softmax"
        )
    return tuple(x.shape), tuple(out.shape)


def check_folder(folder: Path, trust_code: bool = False) -> CheckReport:
    """Every check of the module docstring on a package folder; the report, or
    :class:`PackageError`."""
    try:
        card = read_card(folder / CARD_FILE)
    except CardError as exc:
        raise PackageError(str(exc)) from None
    path = folder / card.model_file
    if not path.exists():
        raise PackageError(f"model_file: {card.model_file} is not in the package")
    if path.is_symlink():
        raise PackageError(f"model_file: {card.model_file} is a link")
    try:
        fmt = model_format(path)
    except ValueError as exc:
        raise PackageError(f"model_file: {exc}") from None
    try:
        actual = file_sha256(path)
    except RegistryError as exc:
        raise PackageError(f"model_file: {exc}") from None
    if actual != card.sha256:
        raise PackageError(
            f"sha256: the card says {card.sha256}, {card.model_file} has {actual}: the model "
            "file is not the one the card describes"
        )
    code: list[str] = []
    if (folder / CUSTOM_OBJECTS_FILE).is_file():
        code.append(f"{CUSTOM_OBJECTS_FILE} (custom objects)")
    if fmt == "saved_model":
        code.append("a TensorFlow SavedModel graph (not covered by Keras safe mode)")
    else:
        config = _model_config(path, fmt)
        code.extend(f"layer {label}" for label in code_in_config(config or {}))
    if code and not trust_code:
        raise PackageError(
            "unsafe: the model runs code Keras safe mode refuses or cannot check: "
            + ", ".join(code)
            + "; import it only if you trust its source, with --trust-code"
        )
    custom = load_custom_objects(folder) if trust_code else {}
    try:
        _, fn, declared = open_model(path, card, trust_code=trust_code, custom_objects=custom)
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises refuses the file
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PackageError(
            f"model_file: {card.model_file} is not a model radnode can load ({fmt}): "
            f"{type(exc).__name__}: {text[:400]}"
        ) from None
    _check_shape(card, declared)
    input_shape, output_shape = _smoke(card, fn)
    return CheckReport(card, folder, actual, fmt, trust_code, input_shape, output_shape, code)


def package_digest(folder: Path, card: ModelCard) -> str:
    """What makes a version's bytes: the model file, the card text and any code."""
    parts = [card.sha256, hashlib.sha256((folder / CARD_FILE).read_bytes()).hexdigest()]
    code = folder / CUSTOM_OBJECTS_FILE
    if code.is_file():
        parts.append(hashlib.sha256(code.read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def validate_package(source: Path, trust_code: bool = False) -> CheckReport:
    """Check a package without importing it (a scratch copy is checked and removed)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="radnode-validate-") as tmp:
        report = check_folder(copy_package(source, Path(tmp)), trust_code)
        report.folder = source
        return report


@dataclass
class ImportResult:
    report: CheckReport
    folder: Path
    unchanged: bool
    entry: dict[str, Any]


def import_package(
    registry: ModelRegistry,
    source: Path,
    *,
    trust_code: bool = False,
    activate: bool = False,
    user: str = "",
) -> ImportResult:
    """Check a package and add it to the registry as ``<name>/<version>`` (module
    docstring); with ``activate``, make it the active version of its name."""
    registry.root.mkdir(parents=True, exist_ok=True)
    staging = registry.root / f".import-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        folder = copy_package(source, staging)
        report = check_folder(folder, trust_code)
        card = report.card
        digest = package_digest(folder, card)
        try:
            target = registry.version_dir(card.name, card.version)
        except RegistryError as exc:
            raise PackageError(str(exc)) from None
        if target.exists():
            existing = registry.entry(card.name, card.version)
            same = existing.get("package_sha256") == digest or (
                "package_sha256" not in existing
                and package_digest(target, registry.model_card(card.name, card.version)) == digest
            )
            if not same:
                raise PackageError(
                    f"version: {card.key} is already in the registry with other bytes; a "
                    "version is immutable: give the package a new version"
                )
            if bool(existing.get("trust_code")) != trust_code:
                raise PackageError(
                    f"{card.key} is already in the registry imported with trust_code="
                    f"{bool(existing.get('trust_code'))}; a version is immutable"
                )
            if activate:
                registry.activate(card.name, card.version)
            return ImportResult(report, target, True, existing)
        entry = {
            "name": card.name,
            "version": card.version,
            "imported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "imported_by": user,
            "source": str(source),
            "sha256": report.sha256,
            "package_sha256": digest,
            "format": report.format,
            "trust_code": trust_code,
            "code": report.code,
        }
        (folder / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
        try:
            installed = registry.install(folder, card.name, card.version)
        except RegistryError as exc:
            raise PackageError(str(exc)) from None
        if activate:
            registry.activate(card.name, card.version)
        logger.info(
            "model imported",
            extra={"model": card.name, "version": card.version, "trust_code": trust_code},
        )
        return ImportResult(report, installed, False, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
