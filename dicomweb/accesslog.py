"""One access-log line per HTTP request, without patient names.

The path is logged (it holds UIDs only); of the query string only the parameter
*names* are kept, since values such as ``PatientName=...`` identify patients.
A plain ASGI middleware, so streamed responses are neither buffered nor cut.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl

logger = logging.getLogger("dicomweb.access")


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500
        sent = 0

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status_code, sent
            if message["type"] == "http.response.start":
                status_code = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            names = sorted({name for name, _ in parse_qsl(query, keep_blank_values=True)})
            client = scope.get("client")
            logger.info(
                "http request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "query_keys": ",".join(names) or None,
                    "status": status_code,
                    "bytes": sent,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
