"""The persistent outbox: instances to deliver to each PACS peer, retried until delivered.

A row is inserted in the same place the result is produced (the analysis
pipeline, after the SR is stored): forwarded originals first, the SR after them,
so a sender working in id order delivers the SR last. ``(peer, sop_instance_uid)``
is unique: a retried job or a second version of a study never queues an instance
twice. A sender claims due rows by pushing ``next_attempt_at`` a lease ahead (a
sender that dies leaves them due again after the lease); a failure is recorded
with its error and an exponential backoff, capped; rows are never dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs_link.routing import route
from pacs_link.tables import outbox, pacs_state
from radnode_core.index import Index, instances, utcnow
from radnode_core.node import Node, ResultSummary

Kind = Literal["original", "sr"]
CLAIM_LEASE_S = 120.0


@dataclass(frozen=True)
class Item:
    id: int
    peer: str
    sop_instance_uid: str
    study_uid: str
    kind: str
    attempts: int


class Outbox:
    def __init__(self, index: Index) -> None:
        self.index = index

    def _insert_ignore(self) -> Any:
        dialect = sqlite if self.index.is_sqlite else postgresql
        # RETURNING tells a new row from a conflict (psycopg reports rowcount -1 here).
        return (
            dialect.insert(outbox)
            .on_conflict_do_nothing(index_elements=["peer", "sop_instance_uid"])
            .returning(outbox.c.id)
        )

    def enqueue(self, peer: str, study_uid: str, items: list[tuple[str, Kind]]) -> int:
        """Queue ``(sop_instance_uid, kind)`` pairs for ``peer``; returns how many were new."""
        if not items:
            return 0
        now, created = time.time(), utcnow()
        rows = [
            {
                "peer": peer,
                "sop_instance_uid": uid,
                "study_uid": study_uid,
                "kind": kind,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": created,
            }
            for uid, kind in items
        ]
        added = 0
        with self.index.transaction() as conn:
            for row in rows:  # executemany cannot report per-row conflicts on every dialect
                added += conn.execute(self._insert_ignore(), row).first() is not None
        return added

    def claim(self, peer: str, limit: int = 100, now: float | None = None) -> list[Item]:
        """Claim up to ``limit`` due rows of ``peer``, oldest first."""
        now = time.time() if now is None else now
        due = and_(outbox.c.peer == peer, outbox.c.state == "pending")
        due = and_(due, outbox.c.next_attempt_at <= now)
        with self.index.transaction() as conn:
            ids = list(
                conn.execute(
                    select(outbox.c.id)
                    .where(due)
                    .order_by(outbox.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                return []
            rows = conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids), due)
                .values(next_attempt_at=now + CLAIM_LEASE_S, attempts=outbox.c.attempts + 1)
                .returning(
                    outbox.c.id,
                    outbox.c.peer,
                    outbox.c.sop_instance_uid,
                    outbox.c.study_uid,
                    outbox.c.kind,
                    outbox.c.attempts,
                )
            ).all()
        return sorted((Item(*r) for r in rows), key=lambda i: i.id)

    def delivered(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.index.transaction() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids))
                .values(state="delivered", delivered_at=utcnow(), last_error=None)
            )

    def retry_later(self, items: list[Item], error: str, backoff_s: float, max_s: float) -> float:
        """Record a failed attempt; the rows are due again after the backoff (returned)."""
        if not items:
            return 0.0
        attempts = max(i.attempts for i in items)
        delay = min(max_s, backoff_s * 2 ** max(0, attempts - 1))
        with self.index.transaction() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([i.id for i in items]))
                .values(next_attempt_at=time.time() + delay, last_error=error[:4000])
            )
        return delay

    def reject(self, items: list[Item], error: str) -> None:
        """The peer refused these instances for good (e.g. STOW-RS FailedSOPSequence):
        state ``failed``, visible in the API and the metrics, not retried."""
        if not items:
            return
        with self.index.transaction() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([i.id for i in items]))
                .values(state="failed", last_error=error[:4000])
            )

    # -- inspection --------------------------------------------------------------

    def counts(self) -> dict[tuple[str, str], int]:
        """Rows per (peer, state)."""
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.peer, outbox.c.state, func.count()).group_by(
                    outbox.c.peer, outbox.c.state
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}

    def oldest_pending_age(self) -> dict[str, float]:
        """Seconds since the oldest pending row of each peer was queued (the backlog's age)."""
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.peer, func.min(outbox.c.created_at))
                .where(outbox.c.state == "pending")
                .group_by(outbox.c.peer)
            )
            now = utcnow()
            ages = {}
            for peer, oldest in rows:
                if oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=now.tzinfo)
                ages[str(peer)] = max(0.0, (now - oldest).total_seconds())
            return ages

    def list(
        self, study_uid: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
        if study_uid is not None:
            query = query.where(outbox.c.study_uid == study_uid)
        if state is not None:
            query = query.where(outbox.c.state == state)
        with self.index.engine.connect() as conn:
            return [public(dict(r._mapping)) for r in conn.execute(query)]

    def sent_uids(self, peer: str, study_uid: str) -> set[str]:
        with self.index.engine.connect() as conn:
            return set(
                conn.execute(
                    select(outbox.c.sop_instance_uid).where(
                        outbox.c.peer == peer, outbox.c.study_uid == study_uid
                    )
                ).scalars()
            )


def public(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("created_at", "delivered_at"):
        if row.get(key) is not None:
            row[key] = row[key].isoformat()
    row["next_attempt_at"] = round(row["next_attempt_at"], 3) if row["state"] == "pending" else None
    return row


def originals_to_forward(index: Index, study_uid: str, pacs_ae_title: str) -> list[str]:
    """The study's received instances that did not come from this PACS (by calling AE),
    SRs excluded (the node's own go as ``sr``; others' are not ours to forward)."""
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.calling_aet)
            .where(instances.c.study_uid == study_uid)
            .order_by(instances.c.series_uid, instances.c.instance_number)
        ).all()
    return [
        uid
        for uid, sop_class, calling_aet in rows
        if not str(sop_class).startswith("1.2.840.10008.5.1.4.1.1.88.")
        and (calling_aet or "") != pacs_ae_title
    ]


# -- small persistent per-peer state (changes sequence, connection status) ------------


def get_state(index: Index, peer: str, key: str) -> Any:
    with index.engine.connect() as conn:
        return conn.execute(
            select(pacs_state.c.value).where(pacs_state.c.peer == peer, pacs_state.c.key == key)
        ).scalar_one_or_none()


def set_state(index: Index, peer: str, key: str, value: Any) -> None:
    dialect = sqlite if index.is_sqlite else postgresql
    stmt = dialect.insert(pacs_state).values(
        peer=peer, key=key, value=value, updated_at=time.time()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["peer", "key"],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )
    with index.transaction() as conn:
        conn.execute(stmt)


def all_states(index: Index, key: str) -> dict[str, Any]:
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(pacs_state.c.peer, pacs_state.c.value, pacs_state.c.updated_at).where(
                pacs_state.c.key == key
            )
        )
        return {r[0]: {**(r[1] or {}), "updated_at": r[2]} for r in rows}


def queue_study_results(
    node: Node, study_uid: str, sr_uid: str | None, result: ResultSummary | None = None
) -> int:
    """Queue a study's results for the peers the routing rules pick (every peer when there
    is no rule): its originals first (where the route has them and they did not come from
    that peer), then the SR. ``result`` None: a result the rules' conditions cannot match."""
    queued = 0
    box = Outbox(node.index)
    summary = result if result is not None else ResultSummary()
    for peer in node.settings.pacs_peers:
        where = route(node.settings.routing_rules, peer, summary)
        if where is None:
            continue
        items: list[tuple[str, Kind]] = []
        if where.originals:
            items += [
                (u, "original") for u in originals_to_forward(node.index, study_uid, peer.ae_title)
            ]
        if sr_uid is not None:
            items.append((sr_uid, "sr"))
        queued += box.enqueue(peer.name, study_uid, items)
    return queued
