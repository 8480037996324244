"""The admin routes: the model registry (list, activate, roll back) and the users."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from ...http_errors import ApiError
from ...json_response import JsonResponse
from ...model import ModelIntegrityError, NoModelError
from ...model.dropbox import DropboxUnreadable, ImportResult, import_from_dropbox
from ...schemas import ImportReport, ModelInfo, UserInfo, VersionList
from ...services import Services, model_info_body
from ..deps import ModelsAdmin, ServicesDep, UsersAdmin
from ..openapi_errors import error_responses

router = APIRouter(tags=["admin"])


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
    response_model=VersionList,
    responses=error_responses(401, 403, 429, 503),
    summary="Model versions with their status",
)
async def list_versions(services: ServicesDep, principal: ModelsAdmin) -> Response:
    return JsonResponse(await anyio.to_thread.run_sync(_version_list, services))


@router.post(
    "/admin/models/{version}/activate",
    response_model=ModelInfo,
    responses=error_responses(401, 403, 404, 409, 422, 429, 503),
    summary="Verify and activate a model version (all workers follow)",
)
async def activate(
    request: Request,
    services: ServicesDep,
    version: Annotated[str, Path(min_length=1, max_length=64)],
    principal: ModelsAdmin,
) -> Response:
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
    return JsonResponse(_model_info(services))


@router.post(
    "/admin/models/rollback",
    response_model=ModelInfo,
    responses=error_responses(401, 403, 409, 429, 503),
    summary="Re-activate the previously active version",
)
async def rollback(request: Request, services: ServicesDep, principal: ModelsAdmin) -> Response:
    try:
        model = await anyio.to_thread.run_sync(services.registry.rollback)
    except (NoModelError, ModelIntegrityError) as exc:
        raise ApiError(409, f"nothing to roll back to ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise ApiError(503, f"cannot record the rollback: {exc.strerror}") from None
    services.publish_model()
    request.scope["ml"].model_version = model.version
    return JsonResponse(_model_info(services))


@router.post(
    "/admin/models/import",
    response_model=ImportReport,
    responses=error_responses(401, 403, 404, 429, 503),
    summary="Verify the IDE's drop box and copy its signed versions into the registry",
)
async def import_versions(
    request: Request, services: ServicesDep, principal: ModelsAdmin
) -> Response:
    dropbox = services.settings.dropbox_dir
    if dropbox is None:
        raise ApiError(404, "no drop box is configured (ML_SERVICE_DROPBOX_DIR)")
    try:
        results = await anyio.to_thread.run_sync(import_from_dropbox, dropbox, services.registry)
    except DropboxUnreadable as exc:
        problem = f"{exc.strerror}: its owner, group or mode is not the roles' own"
        raise ApiError(503, problem) from None
    request.scope["ml"].detail = _import_detail(results)
    return JsonResponse(
        {"name": services.settings.model_name, "results": [r.to_dict() for r in results]}
    )


def _import_detail(results: list[ImportResult]) -> str:
    """The audit record's one line: what was imported, what was refused and why."""
    parts = [f"{r.version} {r.status}" + (f" ({r.reason})" if r.reason else "") for r in results]
    return ("import: " + (", ".join(parts) if parts else "nothing in the drop box"))[:1000]


@router.get(
    "/admin/users",
    response_model=list[UserInfo],
    responses=error_responses(401, 403, 429, 503),
    summary="Users and roles (manage them with `python -m ml_service users`)",
)
async def list_users(services: ServicesDep, principal: UsersAdmin) -> Response:
    return JsonResponse([{"name": n, "role": r} for n, r in services.users.names_and_roles()])
