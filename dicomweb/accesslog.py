"""One access-log line per HTTP request, without patient names.

The path is logged (it holds UIDs only); of the query string only the parameter
*names* are kept, since values such as ``PatientName=...`` identify patients.
A plain ASGI middleware, so streamed responses are neither buffered nor cut.
Refused requests (401) are logged once per client and interval, the rest of the
interval as one line with their count (:class:`radnode_core.throttle.Throttle`): a client
probing without a token cannot fill the log.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from radnode_core.throttle import Throttle

logger = logging.getLogger("dicomweb.access")


class AccessLogMiddleware:
    def __init__(self, app: Any, refusal_interval_s: float = 60.0) -> None:
        self.app = app
        self.refusals: Throttle[tuple[str | None, int]] = Throttle(
            refusal_interval_s, _repeated_refusals, name="radnode-access-refusals"
        )

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
            client = scope.get("client")
            host = client[0] if client else None
            if status_code != 401 or self.refusals.hit((host, status_code)):
                query = scope.get("query_string", b"").decode("latin-1")
                names = sorted({name for name, _ in parse_qsl(query, keep_blank_values=True)})
                logger.info(
                    "http request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "query_keys": ",".join(names) or None,
                        "status": status_code,
                        "bytes": sent,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "client": host,
                    },
                )


def _repeated_refusals(key: tuple[str | None, int], count: int, _: object) -> None:
    client, status_code = key
    logger.info(
        "http requests refused, repeated",
        extra={"status": status_code, "client": client, "count": count},
    )
