"""The FastAPI application factory (``uvicorn --factory ml_service.app:create_app``)."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from . import __version__, http_errors, metrics
from .api.routes import admin, health, login, oip, predict, scrape
from .hot_path import PredictHotPath, ServiceApp
from .middleware import ServiceMiddleware
from .oip.handlers import OipHandler
from .services import Services
from .settings import Settings, load_settings

log = logging.getLogger("ml_service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    services = Services(settings)
    handler = OipHandler(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        grpc_server = None
        if settings.grpc_port is not None:
            # Imported only when enabled: grpc's C core is not loaded otherwise.
            from .api.oip_grpc import start_server

            grpc_server = await start_server(app, services, handler)
        app.enter_at(ServiceMiddleware)  # type: ignore[attr-defined]
        # The ~150,000 objects of the imports (scikit-learn, numpy, pydantic) and the model live
        # as long as the worker: out of the collector's reach, a full collection no longer
        # walks them (it took 0.1-0.5 s here, on the event loop, with every request waiting).
        gc.collect()
        gc.freeze()
        log.info("worker %d ready", os.getpid())
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await services.stop()
            metrics.mark_process_dead(os.getpid())

    app = ServiceApp(
        title="ML inference API",
        version=__version__,
        description=(
            "Authenticated, rate-limited, audited inference for the appliance's model. "
            "Get a token with POST /token, send it as `Authorization: Bearer <token>`."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.oip = handler
    http_errors.install(app)
    # This order is the OpenAPI document's order of paths.
    app.include_router(login.router)
    app.include_router(predict.build_router(services.models))
    app.include_router(oip.build_router(services.models))
    app.include_router(health.router)
    app.include_router(scrape.router)
    app.include_router(admin.router)
    app.add_middleware(
        ServiceMiddleware,
        max_body_bytes=settings.max_body_bytes,
        audit=services.audit,
        expose_worker_id=settings.expose_worker_id,
        hot_path=PredictHotPath(app, services),
    )
    _declare_bearer_auth(app)
    return app


def _declare_bearer_auth(app: FastAPI) -> None:
    """Mark every route that depends on ``api.deps.require`` as needing a bearer token."""
    secured: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and any(
            getattr(dep.call, "__ml_auth__", False) for dep in route.dependant.dependencies
        ):
            secured.update((route.path, method.lower()) for method in route.methods or ())

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Access token from POST /token (or the Prometheus scrape token)",
                }
            }
            for path, methods in schema.get("paths", {}).items():
                for method, operation in methods.items():
                    if (path, method) in secured:
                        operation["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
