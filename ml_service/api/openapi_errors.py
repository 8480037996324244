"""The error responses the routes document in the OpenAPI document (the bodies themselves are
``ml_service.http_errors``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..schemas import ErrorResponse, OipError

_DESCRIPTIONS = {
    400: "The body could not be read (e.g. not UTF-8)",
    401: "Missing, invalid, expired or revoked credentials",
    403: "The role lacks the permission named in the error",
    404: "Unknown resource",
    409: "The request conflicts with the model registry's state",
    413: "Request body too large",
    415: "Content-Type or Content-Encoding not accepted",
    422: "The request is not valid",
    429: "Rate limit or login throttle; retry after Retry-After seconds",
    503: "A dependency (model, Redis) is unavailable",
}


def error_responses(
    *codes: int, model: type[BaseModel] = ErrorResponse
) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": model, "description": _DESCRIPTIONS[code]}
        if code == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait",
                    "schema": {"type": "integer"},
                    "required": True,
                }
            }
        responses[code] = entry
    return responses


def oip_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The Open Inference Protocol's error body, ``{"error": "<message>"}``."""
    return error_responses(*codes, model=OipError)


# Every authenticated, rate-limited route can answer these.
AUTHED = (400, 401, 403, 413, 422, 429, 503)
