"""The FastAPI application: assembles routers; the node is handed in, never global."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from dicomweb.accesslog import AccessLogMiddleware
from dicomweb.bodyguard import BodyGuard
from dicomweb.deps import require_read
from dicomweb.docs import mount_docs
from dicomweb.errors import bad_parameters
from dicomweb.headers import InstanceHeaders
from dicomweb.routes import (
    deletion,
    feedback,
    health,
    monitoring,
    pacs,
    qido,
    results,
    retraining,
    stow,
    upload,
    viewer_session,
    wado,
)
from dicomweb.secheaders import SecurityHeaders
from radnode_core import __version__
from radnode_core.node import Node
from viewer_plugin.ohif.dist import PREFIX as OHIF_PREFIX
from viewer_plugin.ohif.mount import mount_ohif
from viewer_plugin.ohif.session import ViewerDicomweb
from viewer_plugin.review import mount_ui


def create_app(node: Node) -> FastAPI:
    """The HTTP edge of ``node``: health, metrics, DICOMweb (PS3.18) and the AI results API.

    Authentication is per router (see :mod:`dicomweb.auth`): ``/healthz`` and ``/readyz`` are open,
    ``/metrics`` is for admins, QIDO/WADO and results for readers, STOW for stores; a request
    with a body is authenticated and size-checked before it is read (:mod:`dicomweb.bodyguard`).
    """
    app = FastAPI(
        title="radnode",
        version=__version__,
        description="DICOMweb (STOW-RS, QIDO-RS, WADO-RS) and AI results of a radnode.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = node
    app.add_exception_handler(RequestValidationError, bad_parameters)
    mount_docs(app)
    app.state.headers = InstanceHeaders()
    app.include_router(health.router)
    app.include_router(stow.router)
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(results.router, dependencies=[require_read])
    app.include_router(pacs.router, dependencies=[require_read])
    app.include_router(pacs.notify_router)
    app.include_router(feedback.router)  # roles per route: feedback is for radiologists
    app.include_router(retraining.router)  # roles per route: runs and models for staff
    app.include_router(monitoring.router)  # admins: the dashboard's charts and drift
    app.include_router(viewer_session.router)  # the embedded OHIF reads as the signed-in user
    app.include_router(deletion.router)  # admin: DELETE studies and series, retention numbers
    app.include_router(upload.router)  # the upload page: zip, JPEG/PNG, instances known
    mount_ui(app)  # /ui/: static pages; their data comes from the API with the user's token
    s = node.settings
    if s.ohif_dir is not None:
        mount_ohif(app, s.ohif_dir)  # /viewer/: OHIF on this origin
    app.add_middleware(BodyGuard, node=node)
    app.add_middleware(SecurityHeaders, settings=s)
    if s.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Length", "Warning"],
            max_age=600,
        )
    # /viewer/dicom-web/ is /dicom-web/ with the viewer session's token: outside the
    # security headers (they see the DICOMweb path), inside the access log (it logs the
    # path the browser asked for, never the token).
    app.add_middleware(ViewerDicomweb, prefix=OHIF_PREFIX)
    app.add_middleware(AccessLogMiddleware, refusal_interval_s=s.auth_failure_interval_s)
    return app
