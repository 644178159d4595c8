"""Who made an HTTP request, for the audit trail (:mod:`radnode_core.audit`).

The user is named as the feedback routes name a reviewer (a static token's
configured name or fingerprint, a JWT's username), never by the token itself;
the network access point is the client address the request came from.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request

from dicomweb.identity import reviewer_of
from radnode_core.audit import StudyRef


def requester(request: Request) -> tuple[str, str | None]:
    """(user id, client address) of a request."""

    client = request.client.host if request.client else None
    return reviewer_of(request).user, client


def study_refs(rows: Iterable[Mapping[str, Any]]) -> list[StudyRef]:
    """One :class:`StudyRef` per study of index rows (``study_uid``, ``sop_class_uid``)."""
    classes: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        classes[str(row["study_uid"])][str(row["sop_class_uid"])] += 1
    return [StudyRef(uid, dict(counts)) for uid, counts in classes.items()]
