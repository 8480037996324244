"""POST /token and POST /token/revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from ... import metrics
from ...auth import unauthorized
from ...http_errors import ApiError
from ...json_response import JsonResponse
from ...redis_state import RedisUnavailable
from ...schemas import RevokeResponse, TokenResponse
from ...services import HashQueueFull
from ...users import audit_name
from ..deps import ServicesDep, TokenHolder
from ..openapi_errors import error_responses

router = APIRouter(tags=["auth"])

_UNAVAILABLE = "the token service is temporarily unavailable"
_BUSY = "too many logins in progress; try again in a moment"
_THROTTLED_BY = {
    "pair": "this name from this address",
    "address": "this address",
    "name": "delay for this name",
}


@router.post(
    "/token",
    response_model=TokenResponse,
    responses=error_responses(400, 401, 413, 422, 429, 503),
    summary="Exchange user name and password for a short-lived access token",
)
async def token(
    request: Request,
    services: ServicesDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
) -> Response:
    info = request.scope["ml"]
    # A password typed into the name field must not reach the audit log as typed.
    info.user = audit_name(username, services.tokens.name_key)
    client = request.scope.get("client")
    ip = client[0] if client else "unknown"
    redis = services.redis
    if not redis.up:
        raise ApiError(503, _UNAVAILABLE, headers={"Retry-After": "5"})
    try:
        # Reserved (counted) before hashing: a burst cannot pass the check all at once.
        attempt = await redis.login_reserve(username, ip)
        if attempt.wait_ms > 0:
            metrics.AUTH_FAILURES.labels("throttled").inc()
            # For the audit log; the client gets the same answer whichever limit it was.
            info.detail = f"login throttled ({_THROTTLED_BY[attempt.refused_by]})"
            raise ApiError(
                429,
                "too many failed logins; try again later",
                headers={"Retry-After": str(max(1, -(-attempt.wait_ms // 1000)))},
            )
        try:
            user = await services.hashes.run(services.users.authenticate, username, password)
        except HashQueueFull:
            await redis.login_not_attempted(username, ip, attempt)
            metrics.AUTH_FAILURES.labels("busy").inc()
            info.detail = "login queue full"
            raise ApiError(503, _BUSY, headers={"Retry-After": "1"}) from None
        if user is None:
            info.detail = "bad credentials"
            raise unauthorized("bad_credentials", "invalid user name or password")
        await redis.login_succeeded(username, ip, attempt)
    except RedisUnavailable:
        raise ApiError(503, _UNAVAILABLE, headers={"Retry-After": "5"}) from None
    access_token, claims = services.tokens.issue(user.name, user.role, user.token_generation)
    info.role = user.role
    return JsonResponse(
        {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": claims.exp - claims.iat,
        }
    )


@router.post(
    "/token/revoke",
    response_model=RevokeResponse,
    responses=error_responses(401, 503),
    summary="Revoke the presented access token (logout)",
)
async def revoke(services: ServicesDep, principal: TokenHolder) -> Response:
    try:
        await services.redis.revoke(
            principal.jti, principal.exp + services.settings.jwt_leeway_seconds
        )
    except RedisUnavailable:
        raise ApiError(503, _UNAVAILABLE, headers={"Retry-After": "5"}) from None
    return JsonResponse({"revoked": True})
