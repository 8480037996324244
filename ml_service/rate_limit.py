"""The per-request rate-limit hit of an authenticated caller (limits: docs/service.md).

Not a dependency of its own: the hit and the token's denylist check are one atomic Redis
script call (``RedisState.authorize``), so ``auth.authenticate`` makes it once it has the
token's claims and permission, and answers 401 when this says the token is revoked. Two
dependencies would need either two round trips or a route that forgets the second and takes
revoked tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import metrics
from .http_errors import ApiError

if TYPE_CHECKING:
    from .middleware import RequestInfo
    from .services import Services
    from .settings import EndpointClass
    from .tokens import Claims

_ADMIN_SUSPENDED = "rate-limit store unavailable; admin calls are suspended"


async def hit(
    services: Services, info: RequestInfo, claims: Claims, endpoint_class: EndpointClass
) -> bool:
    """One hit of ``endpoint_class``'s limit for the token's user: False if the token is
    revoked, True if the hit is allowed (``info.ratelimit`` then holds the headers' figures);
    503 for an admin call without Redis, 429 past the limit."""
    redis = services.redis
    if endpoint_class == "admin" and not redis.up:
        raise ApiError(503, _ADMIN_SUSPENDED, headers={"Retry-After": "5"})
    limit = services.settings.limit_for(claims.sub, claims.role, endpoint_class)
    decision = await redis.authorize(claims.sub, endpoint_class, claims.jti, limit)
    if decision.revoked:
        return False
    if decision.degraded and endpoint_class == "admin":
        raise ApiError(503, _ADMIN_SUSPENDED, headers={"Retry-After": "5"})
    info.ratelimit = (
        decision.limit,
        decision.remaining,
        decision.reset,
        limit.period_seconds,
    )
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(endpoint_class).inc()
        info.detail = f"rate limited ({endpoint_class})"
        raise ApiError(
            429,
            f"rate limit for '{endpoint_class}' exceeded",
            headers={"Retry-After": str(decision.retry_after)},
        )
    return True
