"""Which peers get a study's result: the routing rules of the settings (docs/pacs.md).

With no rule, every PACS peer gets every result: the SR, and the study's originals where
the peer has ``forward_originals``. With rules, a peer gets the SR when a rule naming it
matches the result, and the originals too when such a rule says ``originals``. A rule
matches when each condition it sets holds: a model that made the result has a
``name/version`` starting with ``model``; the label is one of ``labels``; the score is at
least ``min_score``; the analysed series' modality is one of ``modalities``. A condition
on something the result lacks (no score: the study could not be analysed) does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from radnode_core.node import ResultSummary
from radnode_core.settings import PacsPeer, RoutingRule


@dataclass(frozen=True)
class Route:
    """One peer gets the result's SR, and with ``originals`` the study's originals."""

    originals: bool


def matches(rule: RoutingRule, result: ResultSummary) -> bool:
    """Every condition the rule sets holds for the result."""
    if rule.model is not None and not any(m.startswith(rule.model) for m in result.models):
        return False
    if rule.labels and result.label not in rule.labels:
        return False
    if rule.min_score is not None and (result.score is None or result.score < rule.min_score):
        return False
    return not rule.modalities or result.modality in rule.modalities


def route(rules: list[RoutingRule], peer: PacsPeer, result: ResultSummary) -> Route | None:
    """What ``peer`` gets of ``result`` under ``rules``; None: nothing."""
    if not rules:
        return Route(originals=peer.forward_originals)
    matched = [r for r in rules if peer.name in r.peers and matches(r, result)]
    if not matched:
        return None
    return Route(originals=any(r.originals for r in matched))
