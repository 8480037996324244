"""The FastAPI dependencies of the routes: the service objects and the authenticated caller.

A route says what it needs in its signature (``services: ServicesDep``, ``principal:
Predictor``) instead of reading ``request.app.state``. Two callers bypass FastAPI's
dependency resolution and stay outside this module on purpose: the hot path of
``POST /predict`` (``ml_service/hot_path.py``, holds the services itself and calls
``auth.authenticate``) and the gRPC front end (``api/oip_grpc.py``, calls a ``require``
dependency with a minimal request of its own).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from ..auth import Principal, authenticate
from ..oip.handlers import OipHandler
from ..services import Services
from ..settings import EndpointClass


# async: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request.
async def get_services(request: Request) -> Services:
    """The worker's service objects (``create_app`` puts them in the app state)."""
    services: Services = request.app.state.services
    return services


async def get_oip_handler(request: Request) -> OipHandler:
    handler: OipHandler = request.app.state.oip
    return handler


ServicesDep = Annotated[Services, Depends(get_services)]
OipHandlerDep = Annotated[OipHandler, Depends(get_oip_handler)]


def require(
    permission: str | None, endpoint_class: EndpointClass | None, *, scrape_token_ok: bool = False
) -> DependsParam:
    """A dependency: the principal of the bearer token, holding ``permission``, after one
    rate-limit hit of ``endpoint_class`` (both optional); else 401, 403, 429 or 503."""

    # Only the request as parameter: the gRPC front end calls it with a request it builds.
    async def dependency(request: Request) -> Principal:
        return await authenticate(
            await get_services(request),
            request.scope["ml"],
            request.headers.get("authorization"),
            permission,
            endpoint_class,
            scrape_token_ok=scrape_token_ok,
        )

    # app.py declares the bearer security scheme on every route that has this marker.
    dependency.__ml_auth__ = True  # type: ignore[attr-defined]
    return Depends(dependency)


# Who may call a route: its permission and rate-limit class (docs/service.md, "Endpoints").
TokenHolder = Annotated[Principal, require(None, None)]
Predictor = Annotated[Principal, require("predict", "predict")]
FeedbackWriter = Annotated[Principal, require("feedback:write", "predict")]
ModelReader = Annotated[Principal, require("model:read", "read")]
MetricsReader = Annotated[Principal, require("metrics:read", "read", scrape_token_ok=True)]
ModelsAdmin = Annotated[Principal, require("models:admin", "admin")]
UsersAdmin = Annotated[Principal, require("users:admin", "admin")]
