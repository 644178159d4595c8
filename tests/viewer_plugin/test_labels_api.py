"""GET /api/labels: the finding labels the pages offer, from ai_node.labels; the pages and
the Orthanc Explorer script hold no label of their own."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from ai_node.labels import FINDING_LABELS, POSITIVE
from dicomweb.app import create_app
from tests.support.viewer import VIEWER, make_node
from viewer_plugin.explorer import SCRIPT
from viewer_plugin.review import STATIC


def test_labels_route(tmp_path: Path) -> None:
    node = make_node(tmp_path / "data", auth=True)
    try:
        with TestClient(create_app(node)) as client:
            assert client.get("/api/labels").status_code == 401
            answer = client.get("/api/labels", headers={"Authorization": f"Bearer {VIEWER}"})
    finally:
        node.close()
    assert answer.status_code == 200
    assert answer.json() == {"labels": list(FINDING_LABELS), "positive": POSITIVE}


def test_pages_hold_no_label_literal() -> None:
    literal = re.compile("|".join(rf"[\"'>]{re.escape(label)}[\"'<]" for label in FINDING_LABELS))
    for page in [*STATIC.glob("*.html"), *STATIC.glob("*.js"), SCRIPT]:
        assert not literal.search(page.read_text()), page.name
