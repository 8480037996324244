"""One JSON error format for every failure: ``{"error": {code, message, request_id, ...}}``.

FastAPI's own validation and HTTP error handlers are replaced so nothing ever
answers with FastAPI's default shape, an HTML page or a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .logs import request_id_var

log = logging.getLogger("ml_service.errors")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "code": code or _CODES.get(status, "error"),
        "message": message,
        "request_id": request_id_var.get(),
    }
    body.update(extra)
    return Response(
        orjson.dumps({"error": body}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_body_bytes(status: int, message: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "code": _CODES.get(status, "error"),
                "message": message,
                "request_id": request_id_var.get(),
            }
        }
    )


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = []
    for err in exc.errors()[:20]:
        # loc/msg/type only: echoing the input could copy secrets into responses and logs.
        details.append(
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return error_response(422, "the request is not valid", details=details)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.error("unhandled %s", exc.__class__.__name__, exc_info=exc)
    return error_response(500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
