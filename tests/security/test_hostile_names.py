"""Patient names that make libraries warn never reach an ordinary log.

`radnode serve` (authentication on) receives a study by C-STORE and one by STOW-RS whose
patient names highdicom and pydicom find suspect (one component without a caret, too many
component groups, an overlong component); the worker analyses both and builds their SRs.
Then every log stream of the process (stdout and stderr) and every file it wrote but
the audit log, the index and the instances is searched for the names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from ai_node.synth import StudySpec, write_study
from tests.support.hostile import MODALITY, VIEWER, auth, start
from tests.support.security import RELATED, stow_body
from tests.support.tools import storescu

SINGLE = "Sentinelsingle"  # no caret: highdicom warns, quoting it
GROUPS = "Sentinelgroups^A=B=C=D"  # four component groups: pydicom warns
LONG = "Sentinellong" + "x" * 60 + "^Given"  # a component over 64 characters


def _wait_result(base: str, study_uid: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/api/studies/{study_uid}/result", headers=auth(VIEWER))
        if r.status_code == 200 and r.json().get("status") in ("done", "out_of_scope"):
            return r.json()
        assert r.status_code != 200 or r.json().get("status") != "failed", r.text
        time.sleep(0.5)
    raise TimeoutError(f"no AI result for {study_uid}")


def _written_text(data_dir: Path) -> str:
    """Every file under the data dir but the audit log, the index and the stored instances."""
    skip = {"audit", "studies"}
    out = []
    for path in data_dir.rglob("*"):
        relative = path.relative_to(data_dir)
        if not path.is_file() or relative.parts[0] in skip or "index.sqlite3" in path.name:
            continue
        out.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(out)


def test_suspect_patient_names_stay_out_of_every_log(tmp_path: Path) -> None:
    spec: dict[str, Any] = {"region": "chest", "slices": 6, "rows": 64, "columns": 64}
    study_a, files_a = write_study(
        StudySpec(seed=31, patient_name=SINGLE, patient_id="PHISINGLE", **spec), tmp_path / "a"
    )
    study_b, files_b = write_study(
        StudySpec(seed=32, patient_name=GROUPS, patient_id="PHIGROUPS", **spec), tmp_path / "b"
    )
    study_c, files_c = write_study(
        StudySpec(seed=33, patient_name=LONG, patient_id="PHILONG", **spec), tmp_path / "c"
    )
    node = start(tmp_path, "serve", RADNODE_LOG_LEVEL="DEBUG")
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        sent = storescu(node.dicom_port, files_a + files_c)
        assert sent.returncode == 0, sent.stderr
        stow = httpx.post(
            f"{base}/dicom-web/studies",
            content=stow_body(*(p.read_bytes() for p in files_b)),
            headers={"Content-Type": RELATED, **auth(MODALITY)},
            timeout=60,
        )
        assert stow.status_code == 200, stow.text
        for study in (study_a, study_b, study_c):
            _wait_result(base, study.study_instance_uid)
    finally:
        assert node.stop() == 0

    audit = "".join(p.read_text() for p in (node.data_dir / "audit").glob("*.log"))
    assert SINGLE in audit  # the audit log names the patient, as it must
    streams = node.log()  # the process's stdout and stderr
    assert streams.count("study analysed") == 3  # each study's SR was built
    written = _written_text(node.data_dir)
    for text, where in ((streams, "stdout/stderr"), (written, "files")):
        for secret in ("Sentinel", "PHISINGLE", "PHIGROUPS", "PHILONG"):
            assert secret not in text, f"{secret!r} in {where}"
