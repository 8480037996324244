"""Bearer authentication and role permissions, then the request's rate-limit hit (rate_limit.py)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import metrics, rate_limit
from .http_errors import ApiError
from .settings import EndpointClass
from .tokens import Claims, TokenError

if TYPE_CHECKING:
    from .middleware import RequestInfo
    from .services import Services
    from .users import User

PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(
        {"predict", "model:read", "metrics:read", "feedback:write", "models:admin", "users:admin"}
    ),
    "predictor": frozenset({"predict", "model:read", "feedback:write"}),
    "viewer": frozenset({"model:read", "metrics:read"}),
}

SCRAPER = "prometheus-scrape"
# Role of the scrape token only: no access token can carry it (roles are from ROLES), unlike
# the name, which a user could also have.
SCRAPER_ROLE = "scraper"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ml-api"'}


@dataclass(slots=True)
class Principal:
    name: str
    role: str
    jti: str
    exp: int


def unauthorized(reason: str, message: str = "missing or invalid access token") -> ApiError:
    metrics.AUTH_FAILURES.labels(reason).inc()
    return ApiError(401, message, headers=_CHALLENGE)


def _current(claims: Claims, user: User) -> bool:
    """Issued under the user's current token generation (replaced by every password or role
    change). Tokens from before generations existed fall back to the whole-second stamp."""
    if claims.gen is not None:
        return hmac.compare_digest(claims.gen, user.token_generation)
    return claims.iat >= user.tokens_valid_after


async def authenticate(
    services: Services,
    info: RequestInfo,
    authorization: str | None,
    permission: str | None,
    endpoint_class: EndpointClass | None,
    *,
    scrape_token_ok: bool = False,
) -> Principal:
    """The check behind ``api.deps.require`` (also called by the hot path of ``POST /predict``):
    the principal of the ``Authorization`` header value, or an ApiError (401, 403, 429, 503)."""
    # Parsed here rather than by fastapi.security.HTTPBearer: one dependency less per
    # request on the hot path. The OpenAPI security scheme is declared in app.py.
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("missing")
    scrape = services.settings.metrics_token
    if (
        scrape_token_ok
        and scrape is not None
        and hmac.compare_digest(token.encode(), scrape.encode())
    ):
        info.user, info.role = SCRAPER, SCRAPER_ROLE
        return Principal(SCRAPER, SCRAPER_ROLE, "", 0)
    try:
        claims = services.tokens.verify(token)
    except TokenError as exc:
        info.detail = exc.reason
        raise unauthorized(exc.reason) from None
    user = services.users.get(claims.sub)
    if user is None:
        info.detail = "unknown_user"
        raise unauthorized("unknown_user")
    if user.role != claims.role or not _current(claims, user):
        info.detail = "stale_token"
        raise unauthorized("stale_token")
    info.user, info.role = claims.sub, claims.role
    if permission is not None and permission not in PERMISSIONS[claims.role]:
        metrics.AUTH_FAILURES.labels("forbidden").inc()
        info.detail = f"missing permission {permission}"
        raise ApiError(
            403,
            f"role '{claims.role}' lacks the permission '{permission}'",
            missing_permission=permission,
        )
    if endpoint_class is not None:
        # The denylist check of the token rides on the rate-limit hit: one Redis call.
        if not await rate_limit.hit(services, info, claims, endpoint_class):
            info.detail = "revoked"
            raise unauthorized("revoked")
    elif claims.jti in services.redis.local_revoked:
        raise unauthorized("revoked")
    return Principal(claims.sub, claims.role, claims.jti, claims.exp)
