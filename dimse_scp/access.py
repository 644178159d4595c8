"""Who may associate: the calling-AE allow-list and the called-AE check (PS3.8 7.1.1).

An entry of the allow-list is ``AE`` (from any host) or ``AE@host`` (host is an
IP address or a name resolved once at start-up). A peer that does not match is
refused with A-ASSOCIATE-RJ before any data is exchanged.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AET = (
    0x01,
    0x01,
    0x03,
)  # rejected-permanent, service-user, calling AE not recognized
REJECT_CALLED_AET = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE not recognized
# rejected-transient, service-provider (presentation related), local-limit-exceeded
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# rejected-permanent, service-user, no-reason-given: a request pynetdicom cannot negotiate
REJECT_MALFORMED = (0x01, 0x01, 0x01)


def malformed_contexts(contexts: list[Any]) -> bool:
    """Whether a presentation context of an A-ASSOCIATE-RQ lacks its abstract syntax or
    every transfer syntax (PS3.8 9.3.2.2 requires one and at least one); pynetdicom's
    negotiation fails on such a context and leaves the connection unanswered."""
    for context in contexts:
        if not str(context.abstract_syntax or "").strip():
            return True
        if not [ts for ts in context.transfer_syntax or [] if str(ts or "").strip()]:
            return True
    return False


def _resolve(host: str) -> frozenset[str]:
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        logger.warning("allow-list host does not resolve", extra={"host": host})
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


@dataclass(frozen=True)
class AccessPolicy:
    own_aet: str
    require_called_aet: bool
    # calling AE -> allowed peer addresses (None: any address)
    allowed: dict[str, frozenset[str] | None]

    @classmethod
    def from_settings(
        cls, own_aet: str, allowed_calling_aets: list[str], require_called_aet: bool
    ) -> AccessPolicy:
        allowed: dict[str, frozenset[str] | None] = {}
        for entry in allowed_calling_aets:
            aet, _, host = entry.strip().partition("@")
            aet = aet.strip()
            if not aet:
                raise ValueError(f"allow-list entry without an AE title: {entry!r}")
            if not host:
                allowed[aet] = None
                continue
            addresses = _resolve(host.strip())
            previous = allowed.get(aet, frozenset())
            if previous is not None:
                allowed[aet] = previous | addresses
        return cls(own_aet=own_aet.strip(), require_called_aet=require_called_aet, allowed=allowed)

    def check(self, calling_aet: str, called_aet: str, peer_address: str) -> tuple[int, ...] | None:
        """None if the association may proceed, else the A-ASSOCIATE-RJ (result, source, reason)."""
        if self.require_called_aet and called_aet.strip() != self.own_aet:
            return REJECT_CALLED_AET
        if not self.allowed:
            return None
        addresses = self.allowed.get(calling_aet.strip(), frozenset())
        if addresses is None:
            return None
        try:
            peer = str(ipaddress.ip_address(peer_address))
        except ValueError:
            peer = peer_address
        if peer.startswith("::ffff:"):
            peer = peer.removeprefix("::ffff:")
        return None if peer in addresses else REJECT_CALLING_AET
