"""Importing a model package: what is checked, what is refused (naming the problem, the
byom_registry unchanged), immutability of versions, trusted code, the CLI and its audit trail."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from ai_node.package import PackageError, import_package, validate_package
from ai_node.registry import ModelRegistry, ModelSet, RegistryError, file_sha256
from radnode.cli import main as radnode
from tests.support.model_packages import (
    ct_card,
    lambda_model,
    prototype_cnn,
    registry_state,
    sha256,
    write_package,
)


def _copy(package: Path, dest: Path) -> Path:
    shutil.copytree(package, dest)
    return dest


def _card(folder: Path) -> dict:
    return yaml.safe_load((folder / "model.yaml").read_text())


def _set_card(folder: Path, card: dict) -> None:
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))


def _refused(byom_registry: ModelRegistry, package: Path, match: str, **kw) -> str:
    before = registry_state(byom_registry.root)
    with pytest.raises(PackageError, match=match) as info:
        import_package(byom_registry, package, **kw)
    assert registry_state(byom_registry.root) == before, "a refused import changed the registry"
    assert not list(byom_registry.root.glob(".import-*"))
    return str(info.value)


def test_import_checks_loads_and_runs_the_prototype_h5(byom_registry, proto_package) -> None:
    result = import_package(byom_registry, proto_package, user="tester")
    assert not result.unchanged and result.report.format == "h5"
    assert result.report.output_shape == (2, 1) and result.report.input_shape[1:] == (128, 128, 1)
    entry = json.loads((byom_registry.version_dir("proto-ct", "1.0") / "entry.json").read_text())
    assert entry["trust_code"] is False and entry["imported_by"] == "tester"
    assert entry["sha256"] == sha256(proto_package / "model.h5")
    # imported, not active until activated; then the worker's ModelSet loads it once
    assert byom_registry.active_or_none("proto-ct") is None
    byom_registry.activate("proto-ct", "1.0")
    models = ModelSet(byom_registry)
    assert models.get("proto-ct") is models.get("proto-ct")
    # the same bytes again: nothing to do
    again = import_package(byom_registry, proto_package)
    assert again.unchanged


def test_a_version_is_immutable(byom_registry, proto_package, tmp_path) -> None:
    import_package(byom_registry, proto_package)
    other = write_package(tmp_path / "other", prototype_cnn(filters=(4, 8, 8)), ct_card())
    msg = _refused(byom_registry, other, "immutable")
    assert "proto-ct:1.0" in msg


def test_a_zipped_package_imports(byom_registry, proto_package, tmp_path) -> None:
    archive = tmp_path / "proto.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in proto_package.iterdir():
            z.write(f, f"proto-ct/{f.name}")
    result = import_package(byom_registry, archive)
    assert result.folder == byom_registry.version_dir("proto-ct", "1.0")
    assert (result.folder / "model.h5").is_file()


def test_no_card_is_refused(byom_registry, proto_package, tmp_path) -> None:
    folder = _copy(proto_package, tmp_path / "p")
    (folder / "model.yaml").unlink()
    _refused(byom_registry, folder, "no card: the package has no model.yaml")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["outputs"].update(positive_label="mass"), "outputs.positive_label"),
        (lambda c: c.pop("intended_use"), "intended_use: Field required"),
        (lambda c: c["sr"].update(finding="SCT.LungNodule"), "sr.finding"),
        (lambda c: c["input"].update(channels=4), "input.channels"),
    ],
)
def test_wrong_card_fields_are_refused_naming_the_field(
    byom_registry,
    proto_package,
    tmp_path,
    change,
    field,
) -> None:
    folder = _copy(proto_package, tmp_path / "p")
    card = _card(folder)
    change(card)
    _set_card(folder, card)
    _refused(byom_registry, folder, field)


def test_a_model_file_that_is_not_a_model_is_refused(
    byom_registry, proto_package, tmp_path
) -> None:
    folder = _copy(proto_package, tmp_path / "p")
    (folder / "model.h5").write_bytes(b"this is not an HDF5 file\n" * 100)
    card = _card(folder)
    card["sha256"] = sha256(folder / "model.h5")
    _set_card(folder, card)
    msg = _refused(byom_registry, folder, "model_file: model.h5 is not a model radnode can load")
    assert "(h5)" in msg


def test_an_output_shape_the_card_does_not_describe_is_refused(byom_registry, tmp_path) -> None:
    card = ct_card(
        task="multiclass",
        outputs={"labels": ["a", "b", "c"], "positive_label": "c", "threshold": 0.5},
    )
    folder = write_package(tmp_path / "p", prototype_cnn(), card)
    msg = _refused(byom_registry, folder, "outputs: the model's output")
    assert "(2, 1)" in msg and "(2, 3)" in msg


def test_an_input_shape_the_card_does_not_describe_is_refused(byom_registry, tmp_path) -> None:
    card = ct_card(input={"size": [64, 64]})
    folder = write_package(tmp_path / "p", prototype_cnn(), card)
    _refused(byom_registry, folder, "input.size / input.channels: the model takes")


def test_a_sha256_mismatch_is_refused(byom_registry, proto_package, tmp_path) -> None:
    folder = _copy(proto_package, tmp_path / "p")
    card = _card(folder)
    card["sha256"] = "ab" * 32
    _set_card(folder, card)
    _refused(byom_registry, folder, "sha256: the card says abab")


def test_lambda_layers_need_trust_code_and_the_choice_is_recorded(byom_registry, tmp_path) -> None:
    card = ct_card(
        name="lam",
        model_file="model.keras",
        input={
            "size": [32, 32],
            "normalisation": {"scale": "hu_window", "windows": [{"center": 0, "width": 2000}]},
        },
    )
    folder = write_package(tmp_path / "lam", lambda_model(), card)
    msg = _refused(byom_registry, folder, "unsafe")
    assert "Lambda (doubler)" in msg and "--trust-code" in msg
    with pytest.raises(PackageError, match="unsafe"):
        validate_package(folder)
    result = import_package(byom_registry, folder, trust_code=True)
    assert result.entry["trust_code"] is True
    byom_registry.activate("lam", "1.0")
    assert ModelSet(byom_registry).get("lam").trust_code is True  # loads as it was imported


def test_a_model_file_changed_after_import_is_not_loaded(byom_registry, proto_package) -> None:
    import_package(byom_registry, proto_package, activate=True)
    path = byom_registry.version_dir("proto-ct", "1.0") / "model.h5"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256 of model.h5 is"):
        ModelSet(byom_registry).get("proto-ct")


def test_cli_validate_import_list_activate_deactivate_audited(
    byom_registry,
    proto_package,
    tmp_path,
    capsys,
) -> None:
    common = ["--models-dir", str(byom_registry.root), "--data-dir", str(tmp_path / "data")]
    assert radnode(["model", "validate", str(proto_package)]) == 0
    assert "proto-ct:1.0: valid" in capsys.readouterr().out
    assert radnode(["model", "import", str(proto_package), *common]) == 0
    assert "imported proto-ct:1.0" in capsys.readouterr().out
    assert radnode(["model", "activate", "proto-ct:1.0", *common]) == 0
    assert byom_registry.active_or_none("proto-ct") == "1.0"
    assert radnode(["model", "list", *common]) == 0
    rows = [
        [c.strip() for c in line.split("│") if c.strip()]
        for line in capsys.readouterr().out.splitlines()
        if "│" in line
    ]
    assert ["proto-ct", "1.0", "*", "binary", "CT"] in [r[:5] for r in rows]
    assert radnode(["model", "deactivate", "proto-ct", *common]) == 0
    assert byom_registry.active_or_none("proto-ct") is None
    broken = _copy(proto_package, tmp_path / "broken")
    (broken / "model.yaml").unlink()
    assert radnode(["model", "import", str(broken), *common]) == 1
    assert "no card" in capsys.readouterr().err
    # the shipped byom_registry is not written to
    assert radnode(["model", "import", str(proto_package)]) == 2
    log = "".join(p.read_text() for p in (tmp_path / "data" / "audit").glob("audit-*.log"))
    events = [line for line in log.splitlines() if 'csd-code="110131"' in line]
    described = [e.split("<EventOutcomeDescription>")[1].split("<")[0] for e in events]
    assert [d.split(":")[0] for d in described] == [
        "model import",
        "model activate",
        "model deactivate",
        "model import refused",
    ]
    assert "sha256=" in described[0] and "trust_code=false" in described[0]
    assert 'ParticipantObjectID="radnode-model:proto-ct:1.0"' in events[0]


def test_a_savedmodel_needs_trust_code_then_runs(byom_registry, tmp_path) -> None:
    folder = tmp_path / "sm"
    folder.mkdir()
    prototype_cnn(filters=(4, 8, 8)).export(folder / "saved_model", verbose=False)
    card = ct_card(name="proto-sm", model_file="saved_model")
    card["sha256"] = file_sha256(folder / "saved_model")
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    msg = _refused(byom_registry, folder, "unsafe")
    assert "SavedModel" in msg
    result = import_package(byom_registry, folder, trust_code=True, activate=True)
    assert result.report.format == "saved_model" and result.report.output_shape == (2, 1)
    model = ModelSet(byom_registry).get("proto-sm")
    assert model.predict_batched(np.zeros((3, 128, 128, 1), np.float32)).shape == (3, 1)
