"""Health, metrics and admin (model registry, users) routes."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from . import metrics
from .auth import Principal, require
from .errors import ApiError
from .model import ModelIntegrityError, NoModelError
from .openapi import errors
from .schemas import Health, ModelInfo, UserInfo, VersionList
from .services import Services, model_info_body

router = APIRouter()


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def readiness(services: Services) -> tuple[bool, dict[str, object]]:
    model = services.registry.active
    redis_up = services.redis.up
    if model is None:
        status = "not_ready"
    elif redis_up:
        status = "ready"
    else:
        # Predictions still work (per-process limits), so stay in rotation but say so.
        status = "degraded"
    return model is not None, {
        "status": status,
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
        "redis": "up" if redis_up else "down",
    }


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "No verified model loaded"}
}


@router.get("/health/live", tags=["health"], response_model=Health, summary="Liveness")
async def live() -> Response:
    return _json({"status": "ok"})


@router.get(
    "/health/ready",
    tags=["health"],
    response_model=Health,
    responses=_NOT_READY,
    summary="Readiness: 200 ready/degraded (Redis down), 503 without a model",
)
async def ready(request: Request) -> Response:
    ok, body = readiness(request.app.state.services)
    return _json(body, 200 if ok else 503)


@router.get(
    "/metrics",
    tags=["ops"],
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        **errors(401, 403, 429, 503),
    },
    response_class=Response,
    summary="Prometheus metrics (scrape token or a viewer/admin access token)",
)
async def metrics_endpoint(
    request: Request,
    principal: Annotated[Principal, require("metrics:read", "read", scrape_token_ok=True)],
) -> Response:
    body, content_type = await anyio.to_thread.run_sync(metrics.render)
    return Response(body, media_type=content_type)


# ----- admin -----


def _version_list(services: Services) -> dict[str, object]:
    active = services.registry.active
    return {
        "name": services.settings.model_name,
        "active": active.version if active else None,
        "versions": [
            {
                "version": v.version,
                "status": v.status,
                "reason": v.reason,
                "trained_at": v.trained_at,
                "metrics": v.metrics,
            }
            for v in services.registry.versions()
        ],
    }


def _model_info(services: Services) -> dict[str, object]:
    model = services.registry.active
    assert model is not None
    return model_info_body(model)


@router.get(
    "/admin/models",
    tags=["admin"],
    response_model=VersionList,
    responses=errors(401, 403, 429, 503),
    summary="Model versions with their status",
)
async def list_versions(
    request: Request, principal: Annotated[Principal, require("models:admin", "admin")]
) -> Response:
    services: Services = request.app.state.services
    return _json(await anyio.to_thread.run_sync(_version_list, services))


@router.post(
    "/admin/models/{version}/activate",
    tags=["admin"],
    response_model=ModelInfo,
    responses=errors(401, 403, 404, 409, 422, 429, 503),
    summary="Verify and activate a model version (all workers follow)",
)
async def activate(
    request: Request,
    version: Annotated[str, Path(min_length=1, max_length=64)],
    principal: Annotated[Principal, require("models:admin", "admin")],
) -> Response:
    services: Services = request.app.state.services
    request.scope["ml"].detail = f"activate {version}"
    try:
        await anyio.to_thread.run_sync(services.registry.activate, version)
    except KeyError:
        raise ApiError(404, f"no model version {version!r}") from None
    except ModelIntegrityError as exc:
        raise ApiError(409, f"version {version!r} refused: {exc.reason}") from None
    except OSError as exc:
        # The pointer every worker follows could not be written: nothing changed.
        raise ApiError(503, f"cannot record the activation: {exc.strerror}") from None
    services.publish_model()
    request.scope["ml"].model_version = version
    return _json(_model_info(services))


@router.post(
    "/admin/models/rollback",
    tags=["admin"],
    response_model=ModelInfo,
    responses=errors(401, 403, 409, 429, 503),
    summary="Re-activate the previously active version",
)
async def rollback(
    request: Request, principal: Annotated[Principal, require("models:admin", "admin")]
) -> Response:
    services: Services = request.app.state.services
    try:
        model = await anyio.to_thread.run_sync(services.registry.rollback)
    except (NoModelError, ModelIntegrityError) as exc:
        raise ApiError(409, f"nothing to roll back to ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise ApiError(503, f"cannot record the rollback: {exc.strerror}") from None
    services.publish_model()
    request.scope["ml"].model_version = model.version
    return _json(_model_info(services))


@router.get(
    "/admin/users",
    tags=["admin"],
    response_model=list[UserInfo],
    responses=errors(401, 403, 429, 503),
    summary="Users and roles (manage them with `python -m ml_service users`)",
)
async def list_users(
    request: Request, principal: Annotated[Principal, require("users:admin", "admin")]
) -> Response:
    services: Services = request.app.state.services
    return _json([{"name": n, "role": r} for n, r in services.users.names_and_roles()])
