"""GET /metrics: the Prometheus scrape (the metrics themselves are ``ml_service.metrics``)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from starlette.responses import Response

from ... import metrics
from ..deps import MetricsReader
from ..openapi_errors import error_responses

router = APIRouter(tags=["ops"])


@router.get(
    "/metrics",
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        **error_responses(401, 403, 429, 503),
    },
    response_class=Response,
    summary="Prometheus metrics (scrape token or a viewer/admin access token)",
)
async def metrics_endpoint(principal: MetricsReader) -> Response:
    body, content_type = await anyio.to_thread.run_sync(metrics.render)
    return Response(body, media_type=content_type)
