"""One JSON error format for every failure: ``{"error": {code, message, request_id, ...}}``.

The Open Inference Protocol's routes (``/v2`` and below) answer ``{"error": "<message>"}``
instead, as the protocol specifies and its clients parse.

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

from .json_response import JsonResponse
from .logs import request_id_var

# Named as before the module became http_errors.py: its log lines keep their logger.
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
    return JsonResponse({"error": body}, status_code=status, headers=headers)


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


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def oip_error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    retry = (headers or {}).get("Retry-After")
    if retry is not None:
        # Clients of the protocol show the message only: say there when to retry.
        message = f"{message}; retry after {retry} s"
    return JsonResponse({"error": message}, status_code=status, headers=headers)


async def api_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if is_oip_path(request.url.path):
        return oip_error_response(exc.status, exc.message, exc.headers)
    return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers, **exc.extra)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if is_oip_path(request.url.path):
        return oip_error_response(422, validation_message(exc.errors()))
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


def validation_message(errors: Any) -> str:
    """One line naming the first problems (location and reason, never the input)."""
    parts = []
    for err in list(errors)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
    return "the request is not valid: " + "; ".join(parts)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(exc.status_code, "error")
    if is_oip_path(request.url.path):
        return oip_error_response(exc.status_code, message, dict(exc.headers or {}))
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled %s", exc.__class__.__name__, exc_info=exc)
    if is_oip_path(request.url.path):
        return oip_error_response(500, "internal error")
    return error_response(500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
