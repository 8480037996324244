"""The outermost layer of every HTTP request (pure ASGI, no per-request task or copy).

It gives the request an id, enforces the body size limit (413, also for chunked
bodies), adds the request id, rate-limit and security headers to the response,
records metrics, and turns anything unexpected into a JSON 500 instead of a
stack trace.

The audit record is written when the response starts, before any of it is sent:
if it cannot be written the client gets a 503 instead of the response (nothing
is served unaudited). The one exception is Prometheus's scrape with the scrape
token: it carries the counter that raises the alert, and holds no request data.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .audit import AuditLog
from .auth import SCRAPER_ROLE
from .http_errors import error_body_bytes
from .logs import request_id_var

if TYPE_CHECKING:
    from .hot_path import PredictHotPath

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
    "/admin/models/import": "models.import",
    "/admin/users": "users.list",
}
_STATIC_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]
_AUDIT_FAILED = "the audit log cannot be written; the request was not served"


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
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        audit: AuditLog,
        expose_worker_id: bool = False,
        hot_path: PredictHotPath | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.audit = audit
        self.expose_worker_id = expose_worker_id
        self.hot_path = hot_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = os.urandom(16).hex()  # 128 random bits, the 32 hex digits /feedback takes
        token = request_id_var.set(request_id)
        info = RequestInfo(request_id)
        scope["ml"] = info
        status = 500
        response_started = False
        audited = False
        # After a failed audit write the app's own response is dropped, part by part.
        dropping = False
        max_body = self.max_body

        def extra_headers() -> list[tuple[bytes, bytes]]:
            headers = [(b"x-request-id", request_id.encode()), *_STATIC_HEADERS]
            if self.expose_worker_id:
                headers.append((b"x-worker-id", str(os.getpid()).encode()))
            if info.ratelimit is not None:
                limit, remaining, reset, period = info.ratelimit
                headers.append((b"ratelimit-limit", str(limit).encode()))
                headers.append((b"ratelimit-remaining", str(remaining).encode()))
                headers.append((b"ratelimit-reset", str(reset).encode()))
                headers.append((b"ratelimit-policy", f"{limit};w={int(period)}".encode()))
            return headers

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started, audited, dropping
            if dropping:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                audited = True
                written = await self._audit_batched(
                    scope, info, status, time.perf_counter() - started
                )
                if not written and info.role != SCRAPER_ROLE:
                    dropping = True
                    status = 503
                    await _send_error(send, 503, _AUDIT_FAILED, extra_headers())
                    return
                headers = list(message.get("headers", ()))
                headers.extend(extra_headers())
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

            hot = self.hot_path
            if hot is not None and hot.takes(scope):
                await hot(scope, receive_wrapper, send_wrapper, self.app)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            log.error("unhandled %s", exc.__class__.__name__, exc_info=exc)
            if not response_started:
                await _send_error(send_wrapper, 500, "internal error")
        finally:
            elapsed = time.perf_counter() - started
            if not audited:  # no response was started (the client went away)
                self._audit(scope, info, status, elapsed)
            metrics.observe_request(_route(scope), scope["method"], status, elapsed)
            request_id_var.reset(token)

    def _audit(self, scope: Scope, info: RequestInfo, status: int, elapsed: float) -> bool:
        """Write the request's record; False (logged, counted) when it cannot be written."""
        try:
            self.audit.write(_record(scope, info, status, elapsed))
        except OSError as exc:
            return _audit_failed(exc)
        return True

    async def _audit_batched(
        self, scope: Scope, info: RequestInfo, status: int, elapsed: float
    ) -> bool:
        """``_audit`` in one write with the other requests answered in this loop turn."""
        try:
            await self.audit.append(_record(scope, info, status, elapsed))
        except OSError as exc:
            return _audit_failed(exc)
        return True


def _record(scope: Scope, info: RequestInfo, status: int, elapsed: float) -> dict[str, Any]:
    client = scope.get("client")
    route = _route(scope)
    return {
        "time": _now_iso(),
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


_second: list[Any] = [-1, ""]


def _now_iso() -> str:
    """``datetime.now(UTC).isoformat(timespec="milliseconds")``, the seconds formatted once."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{int((now - second) * 1000):03d}+00:00"


def _audit_failed(exc: OSError) -> bool:
    metrics.AUDIT_WRITE_FAILURES.inc()
    log.error("audit log write failed: %s", exc.strerror or exc.__class__.__name__)
    return False


def _route(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", None) or "unmatched"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(
    send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body_bytes(status, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 503:
        headers.append((b"retry-after", b"5"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + (extra or []),
        }
    )
    await send({"type": "http.response.body", "body": body})
