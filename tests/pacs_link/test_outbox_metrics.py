"""The outbox's backlog as a scrape sees it: rows per peer and state, and the age of each
peer's oldest pending row (0 once it has none)."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from pacs_link.outbox import Outbox
from pacs_link.tables import outbox
from radnode.assembly import build_node
from radnode_core.index import utcnow
from radnode_core.settings import PacsPeer, Settings


def gauges(text: str, name: str) -> dict[str, float]:
    return {
        s.labels["peer"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_the_oldest_pending_row_ages_and_resets_when_delivered(tmp_path) -> None:
    peer = PacsPeer(name="pacs", dicomweb_url="http://127.0.0.1:9/dicom-web")
    node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
    try:
        box = Outbox(node.index)
        box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original"), ("1.2.3.2", "sr")])
        with node.index.transaction() as conn:  # queued an hour ago
            conn.execute(
                update(outbox)
                .where(outbox.c.sop_instance_uid == "1.2.3.1")
                .values(created_at=utcnow() - dt.timedelta(hours=1))
            )
        text = node.metrics.exposition().decode()
        age = gauges(text, "radnode_outbox_oldest_pending_seconds")["pacs"]
        assert 3590 < age < 3700
        assert 'radnode_outbox_items{peer="pacs",state="pending"} 2.0' in text
        box.delivered([item.id for item in box.claim("pacs")])
        text = node.metrics.exposition().decode()
        assert gauges(text, "radnode_outbox_oldest_pending_seconds") == {"pacs": 0.0}
    finally:
        node.close()
