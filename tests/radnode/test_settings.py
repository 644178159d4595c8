"""Settings: one class, RADNODE_* environment, optional TOML file, flags on top."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from radnode_core.settings import Settings


def test_defaults():
    s = Settings.load()
    assert (s.ae_title, s.dicom_port, s.http_port, s.host) == ("RADNODE", 11112, 8080, "127.0.0.1")
    assert s.quiet_period_s == 2.0 and s.duplicate_policy == "keep_first"
    assert s.index_url.startswith("sqlite:///")
    assert s.index_url.endswith("radnode-data/index.sqlite3")


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "radnode.toml"
    cfg.write_text(
        'ae_title = "FROMFILE"\ndicom_port = 104\nquiet_period_s = 5\n'
        'allowed_calling_aets = ["CT1@10.0.0.5", "CT2"]\n'
    )
    s = Settings.load(cfg)
    assert (s.ae_title, s.dicom_port, s.quiet_period_s) == ("FROMFILE", 104, 5.0)
    assert s.allowed_calling_aets == ["CT1@10.0.0.5", "CT2"]
    monkeypatch.setenv("RADNODE_AE_TITLE", "FROMENV")
    monkeypatch.setenv("RADNODE_CONFIG", str(cfg))
    s = Settings.load()
    assert (s.ae_title, s.dicom_port) == ("FROMENV", 104)
    s = Settings.load(ae_title="FROMFLAG", dicom_port=None)
    assert (s.ae_title, s.dicom_port) == ("FROMFLAG", 104)


def test_bad_values_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValidationError, match="ae_title"):
        Settings.load(ae_title="THIS_AE_TITLE_IS_TOO_LONG")
    with pytest.raises(ValidationError, match="duplicate_policy"):
        Settings.load(duplicate_policy="overwrite_everything")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings.load(cfg)
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.toml")


def test_database_url_overrides_sqlite():
    s = Settings.load(database_url="postgresql+psycopg://u:p@db/radnode")
    assert s.index_url == "postgresql+psycopg://u:p@db/radnode"
