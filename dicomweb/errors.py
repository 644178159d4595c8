"""Bad request parameters are 400 (PS3.18 8.6.1.2), with what was wrong in words.

FastAPI answers any validation error with 422. A malformed query string, path or header
is the client's malformed request: 400, naming each parameter and the problem. A body
that does not validate is 422 as in FastAPI, without echoing the input back (FastAPI's own
handler fails with a 500 on a body that is not UTF-8).
"""

from __future__ import annotations

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

_PARAMETER_SOURCES = frozenset({"query", "path", "header", "cookie"})


async def bad_parameters(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and all(e.get("loc", ("body",))[0] in _PARAMETER_SOURCES for e in errors):
        message = "; ".join(
            f"{e['loc'][-1] if len(e['loc']) > 1 else e['loc'][0]}: {e.get('msg', 'invalid')}"
            for e in errors
        )
        return JSONResponse({"detail": message}, status_code=status.HTTP_400_BAD_REQUEST)
    detail = [
        {"type": e.get("type"), "loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg")}
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
