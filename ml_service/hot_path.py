"""``POST /predict`` without the framework's per-request layers, for the requests it answers
the same way: a JSON body that parses and validates, so only the happy path is short.

FastAPI still owns the route (the OpenAPI document, the validation errors, every other
route): the service's own middleware (request id, body limit, audit record, metrics,
headers) runs for both paths, and a request this module does not take whole is handed to
FastAPI's stack below that middleware with its body replayed, before anything about it is
checked or counted. What is taken runs the code the route runs, in the route's order: the
body is read, the same ``authenticate`` as the route's dependency runs (token, permission,
one rate-limit hit), then the body already validated by the route's own body field (the
dependency runs before the body is validated there too, so a valid body sees no
difference), then the same ``predict_body``. Errors are rendered by the app's exception
handlers, as FastAPI would.

Why: with everything else already cheap, FastAPI's layers for one request (OpenTelemetry
middleware, body-limit middleware, routing, exit stacks, dependency resolution, request and
response objects) were most of its time; see docs/performance.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.routes.predict import predict_body
from .auth import authenticate
from .http_errors import ApiError, api_error_response

if TYPE_CHECKING:
    from .services import Services

PATH = "/predict"
_JSON = b"application/json"


def _replaying(messages: list[Message], receive: Receive, error: Exception | None) -> Receive:
    """``receive`` as the framework would have seen it: the messages already read, then the
    error ``receive`` raised (the body limit) if it did, then ``receive`` itself."""
    pending = list(messages)

    async def replay() -> Message:
        nonlocal error
        if pending:
            return pending.pop(0)
        if error is not None:
            exc, error = error, None
            raise exc
        return await receive()

    return replay


def _find_route(routes: list[Any]) -> APIRoute | None:
    """The ``POST /predict`` route; FastAPI 0.165 keeps an included router's routes in it."""
    for route in routes:
        if isinstance(route, APIRoute) and route.path == PATH and "POST" in (route.methods or ()):
            return route
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included and getattr(route, "include_context", None) is not None:
            found = _find_route(included)
            if found is not None:
                return found
    return None


class PredictHotPath:
    def __init__(self, app: FastAPI, services: Services) -> None:
        route = _find_route(app.routes)
        if route is None:
            raise LookupError(f"no POST {PATH} route")
        self.route = route
        self.body_field: Any = route.body_field
        # Held here rather than taken from api.deps per request: FastAPI's dependency
        # resolution is one of the layers this path exists to skip.
        self.services = services
        self.app = app

    def takes(self, scope: Scope) -> bool:
        return scope["path"] == PATH and scope["method"] == "POST"

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, framework: ASGIApp
    ) -> None:
        """Answer the request, or hand it to ``framework`` (the stack below the middleware)."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        error: Exception | None = None
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except StarletteHTTPException as exc:  # the body limit
            error = exc
        value = None if error is not None else self._valid_body(scope, messages, chunks)
        if value is None:
            await framework(scope, _replaying(messages, receive, error), send)
            return
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        scope["path_params"] = {}
        scope["app"] = self.app
        info = scope["ml"]
        authorization = None
        for name, raw in scope["headers"]:
            if name == b"authorization":
                authorization = raw.decode("latin-1")
                break
        try:
            await authenticate(self.services, info, authorization, "predict", "predict")
            body = orjson.dumps(await predict_body(self.services, info, value))
        except ApiError as exc:
            response = await api_error_response(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", _JSON),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _valid_body(self, scope: Scope, messages: list[Message], chunks: list[bytes]) -> Any:
        """The validated body, or None when FastAPI should see the request (anything but a
        complete ``application/json`` body that parses and validates)."""
        if messages[-1]["type"] != "http.request":
            return None
        content_type = None
        for name, raw in scope["headers"]:
            if name == b"content-type":
                content_type = raw
                break
        if content_type != _JSON:
            return None
        try:
            # orjson accepts a subset of what json.loads (FastAPI's parser) does, with the same
            # values; whatever it refuses (NaN, huge integers, lone surrogates) goes to FastAPI.
            data = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            return None
        value, errors = self.body_field.validate(data, {}, loc=("body",))
        return None if errors else value


class ServiceApp(FastAPI):
    """FastAPI whose hot route enters the middleware stack at the service's own middleware.

    The layers above it (Starlette's ServerErrorMiddleware, FastAPI's OpenTelemetry and
    body-limit middleware) do nothing for this service's requests that the service
    middleware does not do itself: it answers every exception with the JSON 500, enforces
    the body limit, and the OpenTelemetry export is not configured.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is not None and scope["type"] == "http" and scope["path"] == PATH:
            scope["app"] = self
            await front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def enter_at(self, layer_type: type) -> None:
        """Enter hot requests at the first middleware of ``layer_type`` (once the stack is
        built, at start-up); without one, they keep entering at the top."""
        layer = self.middleware_stack
        while layer is not None and not isinstance(layer, layer_type):
            layer = getattr(layer, "app", None)
        self.front = layer
