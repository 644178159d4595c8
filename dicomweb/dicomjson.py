"""DICOM JSON (PS3.18 Annex F) building blocks, and media-type parsing for the routes."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

DICOM_JSON = "application/dicom+json"

_NUMBER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD", "SV", "UV"})


def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def element(keyword: str, value: Any, vr: str | None = None) -> tuple[str, dict[str, Any]]:
    """One ``"GGGGEEEE": {"vr": ..., "Value": [...]}`` entry; None or "" gives no Value."""
    tag = tag_hex(keyword)
    vr = vr or str(dictionary_VR(tag))
    entry: dict[str, Any] = {"vr": vr}
    values = value if isinstance(value, list | tuple) else [value]
    values = [v for v in values if v is not None and v != ""]
    if values:
        if vr == "PN":
            entry["Value"] = [{"Alphabetic": str(v)} for v in values]
        elif vr in _NUMBER_VRS:
            entry["Value"] = [int(v) if vr not in ("DS", "FL", "FD") else float(v) for v in values]
        else:
            entry["Value"] = [str(v) for v in values]
    return tag, entry


def parse_media_type(header: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> ("type/subtype", {"a": "b", "c": "d"}) (lower-case names)."""
    media, *params = header.split(";")
    out: dict[str, str] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if sep:
            out[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), out


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"
