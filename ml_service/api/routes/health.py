"""GET /health/live and GET /health/ready (the probes of Podman, Traefik and the OIP routes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ...json_response import JsonResponse
from ...schemas import Health
from ...services import Services
from ..deps import ServicesDep

router = APIRouter(tags=["health"])


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


@router.get("/health/live", response_model=Health, summary="Liveness")
async def live() -> Response:
    return JsonResponse({"status": "ok"})


@router.get(
    "/health/ready",
    response_model=Health,
    responses=_NOT_READY,
    summary="Readiness: 200 ready/degraded (Redis down), 503 without a model",
)
async def ready(services: ServicesDep) -> Response:
    ok, body = readiness(services)
    return JsonResponse(body, 200 if ok else 503)
