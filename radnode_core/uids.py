"""Validation of UIDs that arrive from the network (PS3.5 9.1).

A UID from a peer is untrusted until it passes :func:`check_uid`: digits and
dots only, no empty component, at most 64 characters. That also makes it safe
as a path component (no ``/``, no ``..``).
"""

from __future__ import annotations

import re
from typing import Any

# Leading zeros in a component are tolerated (seen in the wild); empty components are not.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


class InvalidUID(ValueError):
    """A UID from the wire that must not be used (nor touch a path)."""


def check_uid(value: Any, what: str) -> str:
    """Return the UID as a str, or raise :class:`InvalidUID` naming ``what``."""
    uid = str(value).strip().rstrip("\x00") if value is not None else ""
    if not uid:
        raise InvalidUID(f"{what} is missing")
    if len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise InvalidUID(f"{what} is not a valid UID")
    return uid
