"""The outermost layer of every HTTP request (pure ASGI, no per-request task or copy).

It gives the request an id, enforces the body size limit (413, also for chunked
bodies), adds the request id, rate-limit and security headers to the response,
records metrics and writes the audit record, and turns anything unexpected into
a JSON 500 instead of a stack trace.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .audit import AuditLog
from .errors import error_body_bytes
from .logs import request_id_var

log = logging.getLogger("ml_service.http")

_ACTIONS = {
    "/token": "auth.login",
    "/token/revoke": "auth.revoke",
    "/predict": "predict",
    "/v2/models/{name}/infer": "predict",
    "/v2/models/{name}/versions/{version}/infer": "predict",
    "/v2/models/{name}/versions/{version}": "model.info",
    "/v2/models/{name}/ready": "model.ready",
    "/v2/models/{name}/versions/{version}/ready": "model.ready",
    "/v2": "server.metadata",
    "/feedback": "feedback",
    "/model/info": "model.info",
    "/v2/models/{name}": "model.info",
    "/metrics": "metrics.read",
    "/admin/models": "models.list",
    "/admin/models/{version}/activate": "models.activate",
    "/admin/models/rollback": "models.rollback",
    "/admin/users": "users.list",
}
_STATIC_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestInfo:
    __slots__ = ("detail", "model_version", "ratelimit", "request_id", "role", "user")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.user: str | None = None
        self.role: str | None = None
        self.detail: str | None = None
        self.model_version: str | None = None
        self.ratelimit: tuple[int, int, int, float] | None = None


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403, 429):
        return "denied"
    if status < 500:
        return "rejected"
    return "error"


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, audit: AuditLog) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)
        info = RequestInfo(request_id)
        scope["ml"] = info
        status = 500
        response_started = False
        max_body = self.max_body

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(_STATIC_HEADERS)
                if info.ratelimit is not None:
                    limit, remaining, reset, period = info.ratelimit
                    headers.append((b"ratelimit-limit", str(limit).encode()))
                    headers.append((b"ratelimit-remaining", str(remaining).encode()))
                    headers.append((b"ratelimit-reset", str(reset).encode()))
                    headers.append((b"ratelimit-policy", f"{limit};w={int(period)}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > max_body:
                await _send_error(send_wrapper, 413, f"request body larger than {max_body} bytes")
                return
            received = 0

            async def receive_wrapper() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > max_body:
                        raise BodyTooLarge(max_body)
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            log.error("unhandled %s", exc.__class__.__name__, exc_info=exc)
            if not response_started:
                await _send_error(send_wrapper, 500, "internal error")
        finally:
            elapsed = time.perf_counter() - started
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            metrics.observe_request(route, scope["method"], status, elapsed)
            self._audit(scope, info, route, status, elapsed)
            request_id_var.reset(token)

    def _audit(
        self, scope: Scope, info: RequestInfo, route: str, status: int, elapsed: float
    ) -> None:
        client = scope.get("client")
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": info.request_id,
            "user": info.user,
            "role": info.role,
            "client_ip": client[0] if client else None,
            "method": scope["method"],
            "route": route,
            "action": _ACTIONS.get(route, "http"),
            "outcome": _outcome(status),
            "status": status,
            "model_version": info.model_version,
            "latency_ms": round(elapsed * 1000, 3),
            "detail": info.detail,
        }
        try:
            self.audit.write(record)
        except OSError as exc:
            log.error("audit log write failed: %s", exc.strerror)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body_bytes(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
