"""multipart/related (RFC 2387) for DICOMweb: reading a STOW-RS body from disk, writing WADO-RS.

The STOW-RS body is spooled to a file first and read through ``mmap``, so a
2 GB request never sits in memory; each part is copied out on its own.
"""

from __future__ import annotations

import mmap
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class MultipartError(ValueError):
    """The body is not well-formed multipart (PS3.18 8.6.1.2: 400 Bad Request)."""


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # lower-case names
    start: int
    end: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def iter_parts(body: mmap.mmap | bytes, boundary: str) -> Iterator[Part]:
    """The parts of a multipart body, as offsets into ``body`` (RFC 2046 5.1.1)."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("missing or invalid multipart boundary")
    dash = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + dash
    if body[: len(dash)] == dash:
        pos = len(dash)
    else:
        found = body.find(delimiter)
        if found < 0:
            raise MultipartError("multipart boundary not found in the body")
        pos = found + len(delimiter)
    while True:
        if body[pos : pos + 2] == b"--":
            return  # close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or line_end - pos > 256:
            raise MultipartError("malformed multipart delimiter line")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if headers_end == line_end:
            headers_blob = b""
        elif headers_end < 0 or headers_end - line_end > 16384:
            raise MultipartError("multipart part headers not terminated")
        else:
            headers_blob = body[line_end + 2 : headers_end]
        headers: dict[str, str] = {}
        for raw in headers_blob.split(b"\r\n"):
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise MultipartError("malformed multipart part header")
            headers[name.strip().lower()] = value.strip()
        start = headers_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError("multipart body truncated (no closing boundary)")
        yield Part(headers, start, end)
        pos = end + len(delimiter)


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(part_type: str, boundary: str, **params: str) -> str:
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def stream_parts(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]],
    boundary: str,
    batch_bytes: int = 0,
) -> Iterator[bytes]:
    """Encode parts (headers, body chunks) as a multipart body, part by part.

    With ``batch_bytes``, pieces are joined into blocks of about that size: fewer,
    larger writes (and fewer thread hops for a synchronous iterator in Starlette).
    """
    dash = b"--" + boundary.encode()

    def pieces() -> Iterator[bytes]:
        for headers, chunks in parts:
            head = dash + b"\r\n"
            head += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
            yield head
            yield from chunks
            yield b"\r\n"
        yield dash + b"--\r\n"

    if not batch_bytes:
        yield from pieces()
        return
    block: list[bytes] = []
    size = 0
    for piece in pieces():
        block.append(piece)
        size += len(piece)
        if size >= batch_bytes:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)
