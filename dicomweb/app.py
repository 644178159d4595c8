"""The FastAPI application: assembles routers; the node is handed in, never global."""

from __future__ import annotations

from fastapi import FastAPI

from dicomweb.routes import health, results
from radnode import __version__
from radnode.node import Node


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="radnode", version=__version__)
    app.state.node = node
    app.include_router(health.router)
    app.include_router(results.router)
    return app
