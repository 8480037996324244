"""Service configuration: ``ML_SERVICE_*`` environment variables, secrets from files.

Secrets are never values of environment variables (they leak into ``/proc``,
crash reports and ``podman inspect``); the variables hold paths of files that
podman secrets or the Ansible role put in place. Everything that is required or
too weak makes :func:`load_settings` raise :class:`ConfigError` with one line per
problem, and ``python -m ml_service`` refuses to start with that message.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_CHARS = 32
MIN_REDIS_PASSWORD_CHARS = 16

EndpointClass = Literal["predict", "read", "admin"]
ROLES = ("admin", "predictor", "viewer")


class Limit(BaseModel):
    """``limit`` requests per ``period_seconds`` (GCRA: a burst of ``limit``, then steady)."""

    model_config = ConfigDict(extra="forbid")
    limit: Annotated[int, Field(ge=1, le=1_000_000)]
    period_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0


class RoleLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    predict: Limit = Limit(limit=600)
    read: Limit = Limit(limit=120)
    admin: Limit = Limit(limit=60)


class RateLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admin: RoleLimits = RoleLimits(predict=Limit(limit=600), read=Limit(limit=300))
    predictor: RoleLimits = RoleLimits()
    viewer: RoleLimits = RoleLimits(predict=Limit(limit=1), read=Limit(limit=120))


class FeatureRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> FeatureRange:
        if not self.min < self.max:
            raise ValueError("min must be below max")
        return self


def _default_ranges() -> list[FeatureRange]:
    # Iris measurements are centimetres below 10; anything past 30 cm is a unit mix-up.
    return [FeatureRange(min=0.0, max=30.0) for _ in range(4)]


class ConfigError(Exception):
    """The configuration is missing something required or something is too weak."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ML_SERVICE_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    # Listener
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # The Open Inference Protocol over gRPC (h2c, on the same host); unset: no gRPC listener.
    grpc_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Peers whose X-Forwarded-For is believed (Traefik): comma-separated addresses and CIDR
    # networks (10.89.3.0/24), or "*"; uvicorn's rule, which the gRPC listener applies too.
    forwarded_allow_ips: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Test suites only: name the answering worker (its pid) in X-Worker-Id, so a test can
    # check that every worker behaves. Off in production: it tells clients about processes.
    expose_worker_id: bool = False

    # Model
    model_dir: Path
    model_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] = "iris"
    trusted_keys_dir: Path
    # The IDE's drop box (<dir>/<name>/<version>/), read-only here; unset: no import route.
    dropbox_dir: Path | None = None
    model_refresh_seconds: Annotated[float, Field(ge=0.5, le=3600)] = 5.0

    # Users and tokens
    users_file: Path
    jwt_signing_key_file: Path
    jwt_verify_keys_dir: Path | None = None
    jwt_issuer: str = "https://api.localhost"
    jwt_audience: str = "ml-api"
    access_token_ttl_seconds: Annotated[int, Field(ge=60, le=3600)] = 900
    jwt_leeway_seconds: Annotated[int, Field(ge=0, le=60)] = 10
    max_token_bytes: Annotated[int, Field(ge=512, le=16384)] = 4096
    # Login throttle (see docs/service.md): failures per window of one user name from one
    # client address, then that pair is refused; failures of any names from one address,
    # then that address is refused; failures of one name from addresses not known to be good
    # for it, after which each further attempt from such an address waits 1 s, 2 s, 4 s ...
    # up to the maximum. Known good: a successful login of the name from the address within
    # login_known_address_days.
    login_max_failures_per_user: Annotated[int, Field(ge=1, le=1000)] = 5
    login_max_failures_per_ip: Annotated[int, Field(ge=1, le=100_000)] = 50
    login_failure_window_seconds: Annotated[int, Field(ge=10, le=86_400)] = 900
    login_name_delay_after: Annotated[int, Field(ge=1, le=100_000)] = 10
    login_name_delay_max_seconds: Annotated[int, Field(ge=1, le=3600)] = 30
    login_known_address_days: Annotated[int, Field(ge=1, le=365)] = 30
    # Logins waiting for one of a worker's 4 password hashes; beyond that: 503 at once.
    login_hash_queue: Annotated[int, Field(ge=0, le=1000)] = 16
    argon2_time_cost: Annotated[int, Field(ge=2, le=20)] = 3
    argon2_memory_kib: Annotated[int, Field(ge=19_456, le=2_097_152)] = 65_536
    argon2_parallelism: Annotated[int, Field(ge=1, le=16)] = 4

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: Path
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=5)] = 2.0
    redis_probe_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.-]{1,32}$")] = "ml"

    # Rate limits (JSON or ML_SERVICE_RATE_LIMITS__PREDICTOR__PREDICT__LIMIT=...)
    rate_limits: RateLimits = RateLimits()
    # Per-user overrides, e.g. {"bench": {"predict": {"limit": 1000000, "period_seconds": 1}}}
    user_rate_limits: dict[str, dict[EndpointClass, Limit]] = {}
    # The per-process limit while Redis is down is the Redis limit times this factor.
    fallback_limit_factor: Annotated[float, Field(gt=0, le=1)] = 1.0

    # Request validation
    max_body_bytes: Annotated[int, Field(ge=256, le=10 * 1024 * 1024)] = 65_536
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 256
    feature_ranges: list[FeatureRange] = Field(default_factory=_default_ranges)

    # Feedback
    feedback_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    feedback_window: Annotated[int, Field(ge=10, le=100_000)] = 500

    # Metrics and audit
    metrics_token_file: Path | None = None
    audit_log: Path

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        # uvicorn would take anything else as a literal that no client address ever equals
        # (10.89.3.1/24 is no network): every client would look like the proxy. Refused here.
        items = [item.strip() for item in value.split(",")]
        if items == ["*"] or items == [""]:
            return items[0]  # every peer, or none (no proxy in front)
        for item in items:
            try:
                if "/" in item:
                    ipaddress.ip_network(item)
                else:
                    ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f"{item!r} is neither an IP address nor a network like 10.89.3.0/24 "
                    "(no host bits; '*' only alone)"
                ) from None
        return ",".join(items)

    @model_validator(mode="after")
    def _four_ranges(self) -> Settings:
        if len(self.feature_ranges) != 4:
            raise ValueError("feature_ranges needs exactly 4 entries (one per feature)")
        return self

    @cached_property
    def redis_password(self) -> str:
        return read_secret(self.redis_password_file, "ML_SERVICE_REDIS_PASSWORD_FILE")

    @cached_property
    def metrics_token(self) -> str | None:
        if self.metrics_token_file is None:
            return None
        return read_secret(self.metrics_token_file, "ML_SERVICE_METRICS_TOKEN_FILE")

    def limit_for(self, user: str, role: str, endpoint_class: EndpointClass) -> Limit:
        override = self.user_rate_limits.get(user, {}).get(endpoint_class)
        if override is not None:
            return override
        role_limits: RoleLimits = getattr(self.rate_limits, role)
        return getattr(role_limits, endpoint_class)


def _refuse_if_shared(mode: int, path: Path, variable: str) -> None:
    if mode & 0o077:
        raise ConfigError(
            f"{variable}: {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); a secret file must be 0600 or 0400"
        )


def read_secret(path: Path, variable: str) -> str:
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
    _refuse_if_shared(mode, path, variable)
    value = raw.decode("utf-8", "replace").strip()
    if not value:
        raise ConfigError(f"{variable}: {path} is empty")
    return value


def _check_secret_file(
    path: Path | None, variable: str, min_chars: int, problems: list[str]
) -> None:
    if path is None:
        return
    try:
        value = read_secret(path, variable)
    except ConfigError as exc:
        problems.append(str(exc))
        return
    if len(value) < min_chars:
        problems.append(f"{variable}: the secret in {path} is too weak (< {min_chars} characters)")
    elif len(set(value)) < 8:
        problems.append(
            f"{variable}: the secret in {path} is too weak (too few distinct characters)"
        )


def _check_private_file(path: Path, variable: str, problems: list[str]) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        problems.append(f"{variable}: cannot read {path}: {exc.strerror}")
        return
    try:
        _refuse_if_shared(mode, path, variable)
    except ConfigError as exc:
        problems.append(str(exc))


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read and check the configuration; raise :class:`ConfigError` listing every problem."""
    if env is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
    try:
        settings = Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "ML_SERVICE_" + "__".join(str(p) for p in err["loc"]).upper()
            msg = "is required" if err["type"] == "missing" else err["msg"]
            lines.append(f"{name}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    finally:
        if env is not None:
            os.environ.clear()
            os.environ.update(saved)

    problems: list[str] = []
    for variable, path in (
        ("ML_SERVICE_MODEL_DIR", settings.model_dir),
        ("ML_SERVICE_TRUSTED_KEYS_DIR", settings.trusted_keys_dir),
    ):
        if not path.is_dir():
            problems.append(f"{variable}: {path} is not a directory")
    if settings.dropbox_dir is not None and not settings.dropbox_dir.is_dir():
        problems.append(f"ML_SERVICE_DROPBOX_DIR: {settings.dropbox_dir} is not a directory")
    if settings.jwt_verify_keys_dir is not None and not settings.jwt_verify_keys_dir.is_dir():
        problems.append(
            f"ML_SERVICE_JWT_VERIFY_KEYS_DIR: {settings.jwt_verify_keys_dir} is not a directory"
        )
    if not settings.users_file.is_file():
        problems.append(
            f"ML_SERVICE_USERS_FILE: {settings.users_file} does not exist "
            "(create it with `python -m ml_service users add NAME --role ROLE`)"
        )
    _check_private_file(settings.jwt_signing_key_file, "ML_SERVICE_JWT_SIGNING_KEY_FILE", problems)
    _check_secret_file(
        settings.redis_password_file,
        "ML_SERVICE_REDIS_PASSWORD_FILE",
        MIN_REDIS_PASSWORD_CHARS,
        problems,
    )
    _check_secret_file(
        settings.metrics_token_file, "ML_SERVICE_METRICS_TOKEN_FILE", MIN_SECRET_CHARS, problems
    )
    # A user name in the URL is fine (Redis ACL user); a password there would leak.
    netloc = settings.redis_url.split("//", 1)[-1].split("/", 1)[0]
    if "@" in netloc and ":" in netloc.rsplit("@", 1)[0]:
        problems.append(
            "ML_SERVICE_REDIS_URL: put the password in ML_SERVICE_REDIS_PASSWORD_FILE, not the URL"
        )
    audit_dir = settings.audit_log.parent
    if not audit_dir.is_dir():
        problems.append(f"ML_SERVICE_AUDIT_LOG: directory {audit_dir} does not exist")
    if problems:
        raise ConfigError("\n".join(problems))
    return settings
