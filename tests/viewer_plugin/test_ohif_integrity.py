"""The pinned OHIF tarball's integrity check (``make ohif``): the pin matches the Dockerfile's,
a tarball with another hash is refused before it is unpacked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from viewer_plugin.ohif.integrity import check, integrity_of, main

REPO = Path(__file__).resolve().parents[2]


def test_makefile_and_dockerfile_pin_the_same_ohif() -> None:
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    version = re.search(r"^OHIF_VERSION\s*:=\s*(\S+)$", makefile, re.M)
    integrity = re.search(r"^OHIF_INTEGRITY\s*:=\s*(sha512-\S+)$", makefile, re.M)
    assert version and integrity
    assert f"ARG OHIF_VERSION={version[1]}" in dockerfile
    assert f"ARG OHIF_SHA512={integrity[1].removeprefix('sha512-')}" in dockerfile
    recipe = makefile[makefile.index("$(OHIF_DIST)/index.html:") :]
    checked = recipe.index("viewer_plugin.ohif.integrity")
    assert checked < recipe.index("tar xzf"), "the tarball is unpacked before it is checked"


def test_integrity_is_npms_sri_and_a_changed_tarball_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "app.tgz"
    tarball.write_bytes(b"the tarball npm published")
    pinned = integrity_of(tarball)
    assert pinned.startswith("sha512-") and len(pinned) == len("sha512-") + 88
    check(tarball, pinned)
    assert main([str(tarball), pinned]) == 0

    tarball.write_bytes(b"the tarball someone else published")
    with pytest.raises(ValueError, match="is not the pinned"):
        check(tarball, pinned)
    assert main([str(tarball), pinned]) == 1
    assert main([str(tarball), "md5-abc"]) == 1
    assert main([str(tmp_path / "missing.tgz"), pinned]) == 1
    assert main([]) == 2
