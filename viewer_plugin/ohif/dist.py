"""The prebuilt OHIF viewer (npm ``@ohif/app``'s ``dist/``) served below a path prefix.

OHIF's published build is made for the root of an origin: ``index.html`` names
``/app-config.js`` and its bundles from ``/``, sets ``window.PUBLIC_URL = "/"``, and each
webpack runtime (the app bundle and its web workers) loads its chunks from
``__webpack_require__.p = "/"``. OHIF supports a sub-path only when built with
``PUBLIC_URL``; for the prebuilt one the same strings are replaced when served (never in
the files), so the unchanged npm tarball, checked against its integrity, is what runs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from viewer_plugin.ohif.config import app_config_js

PREFIX = "/viewer"
"""Where radnode serves OHIF on its own origin (and the standalone server on its own)."""

PUBLIC_PATH = b'__webpack_require__.p = "/";'
INDEX_ROOTED = re.compile(rb'(\b(?:src|href)=")/(?!/)')
INDEX_PUBLIC_URL = b'window.PUBLIC_URL="/"'
SAME_ORIGIN = "'self'"


def frame_headers(ancestors: str) -> dict[str, str]:
    """Who may embed the viewer: the review page, on this origin by default (or on the
    origins in ``ancestors``, a CSP source list, when OHIF has an origin of its own)."""
    headers = {"Content-Security-Policy": f"frame-ancestors {ancestors}"}
    if ancestors == SAME_ORIGIN:
        headers["X-Frame-Options"] = "SAMEORIGIN"  # for browsers without frame-ancestors
    return headers


def default_dist() -> Path:
    """Where ``make ohif`` unpacks ``@ohif/app``'s prebuilt viewer, from the repository root;
    elsewhere, set ``ohif_dir``."""
    return Path("build") / "ohif" / "package" / "dist"


def check_dist(dist: Path) -> Path:
    """``dist`` when it holds a viewer; else FileNotFoundError naming the fix."""
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF viewer in {dist}: run `make ohif`")
    return dist


def rebase_index(html: bytes, prefix: str) -> bytes:
    """``index.html`` with its root-relative links and ``PUBLIC_URL`` under ``prefix``."""
    base = prefix.rstrip("/").encode()
    html = INDEX_ROOTED.sub(rb"\1" + base + b"/", html)
    return html.replace(INDEX_PUBLIC_URL, b'window.PUBLIC_URL="' + base + b'/"')


def rebase_bundle(js: bytes, prefix: str) -> bytes:
    """A webpack bundle whose runtime loads its chunks from ``prefix``."""
    base = prefix.rstrip("/").encode()
    return js.replace(PUBLIC_PATH, b'__webpack_require__.p = "' + base + b'/";')


@lru_cache(maxsize=32)
def _rebased(path: Path, mtime_ns: int, prefix: str) -> bytes | None:
    """The served bytes of an index or bundle that needs rebasing; None for any other file."""
    del mtime_ns  # part of the cache key: a replaced dist is read again
    if path.name == "index.html":
        return rebase_index(path.read_bytes(), prefix)
    if path.suffix == ".js":
        data = path.read_bytes()
        if PUBLIC_PATH in data:
            return rebase_bundle(data, prefix)
    return None


class OhifFiles(StaticFiles):
    """OHIF's ``dist/`` below ``prefix``: our ``app-config.js``, rebased index and bundles,
    the other files as they are, and ``index.html`` for any path that is no file (OHIF's
    own router: ``<prefix>/viewer?StudyInstanceUIDs=...``)."""

    def __init__(
        self, dist: Path, prefix: str = PREFIX, frame_ancestors: str = SAME_ORIGIN
    ) -> None:
        super().__init__(directory=check_dist(dist), html=True)
        self.prefix = prefix.rstrip("/")
        self.config = app_config_js(self.prefix).encode()
        self.frame_headers = frame_headers(frame_ancestors)

    async def get_response(self, path: str, scope: Any) -> Response:
        if path == "app-config.js":
            return self._answer(self.config, "application/javascript")
        try:
            response = await super().get_response(path, scope)
        except StarletteHTTPException as exc:
            if exc.status_code != 404:
                raise
            return self._index()
        if path in ("", ".", "index.html"):
            return self._index()
        full, _ = self.lookup_path(path)
        if full.endswith(".js"):
            rebased = _rebased(Path(full), Path(full).stat().st_mtime_ns, self.prefix)
            if rebased is not None:
                return self._answer(rebased, "application/javascript")
        response.headers.update(self.frame_headers)
        return response

    def _index(self) -> Response:
        index = Path(str(self.directory)) / "index.html"
        html = _rebased(index, index.stat().st_mtime_ns, self.prefix)
        assert html is not None
        return self._answer(html, "text/html; charset=utf-8", cache=False)

    def _answer(self, body: bytes, media_type: str, cache: bool = True) -> Response:
        headers = dict(self.frame_headers)
        if not cache:
            headers["Cache-Control"] = "no-cache"
        return Response(body, media_type=media_type, headers=headers)
