"""OHIF on radnode's own origin: the viewer at ``/viewer/`` of the HTTP edge.

Same origin as the review pages and the DICOMweb it reads, so no CORS and no second port;
its data requests go to ``/viewer/dicom-web/`` (:class:`viewer_plugin.ohif.session.ViewerDicomweb`).
Mounted when ``ohif_dir`` is set (``make run`` sets it to what ``make ohif`` fetched).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from radnode_core.settings import Settings
from viewer_plugin.ohif.dist import PREFIX, OhifFiles


def mount_ohif(app: FastAPI, dist: Path, prefix: str = PREFIX) -> None:
    """Serve OHIF from ``dist`` at ``prefix`` (``/viewer`` redirects to ``/viewer/``)."""
    files = OhifFiles(dist, prefix)

    @app.get(prefix, include_in_schema=False)
    def viewer_root() -> RedirectResponse:
        return RedirectResponse(prefix + "/")

    app.mount(prefix + "/", files, name="ohif")


def viewer_url(settings: Settings) -> str | None:
    """Where the review page finds OHIF: ``ohif_url`` when set (a viewer elsewhere), else
    ``/viewer`` on this origin when this node serves it, else None (no viewer)."""
    if settings.ohif_url:
        return settings.ohif_url.rstrip("/")
    if settings.ohif_dir is not None:
        return PREFIX
    return None
