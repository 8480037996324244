"""Session fixtures: a real redis-server, signed models, and the API under uvicorn (2 workers)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import (
    ROLES,
    Deployment,
    RedisServer,
    Server,
    limited_overrides,
    make_deployment,
)

from ml_service.model.testing import SigningKeys, make_keys, make_signed_model


@pytest.fixture(scope="session", autouse=True)
def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server is required (Debian package redis-server, see .ci/apt-packages.txt)"
        )


@pytest.fixture(scope="session")
def model_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return make_keys(tmp_path_factory.mktemp("model-keys"))


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory, model_keys: SigningKeys) -> Path:
    """Two signed versions of 'iris', trained once per session (older first)."""
    model_dir = tmp_path_factory.mktemp("trained-models")
    make_signed_model(model_dir, model_keys, random_state=1)
    make_signed_model(model_dir, model_keys, random_state=2)
    return model_dir


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), secrets.token_urlsafe(24))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    trained_models: Path,
    model_keys: SigningKeys,
) -> Deployment:
    d = make_deployment(
        tmp_path_factory.mktemp("deployment"),
        redis_server,
        trained_models,
        model_keys,
        {
            "ML_SERVICE_USER_RATE_LIMITS": limited_overrides(),
            "ML_SERVICE_LOGIN_MAX_FAILURES_PER_IP": "20",
        },
    )
    return d


@pytest.fixture(scope="session")
def server(deployment: Deployment) -> Iterator[Server]:
    """The shared API: 2 workers. Tests must not change its model or stop its Redis."""
    srv = Server(deployment, workers=2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tokens(server: Server) -> dict[str, str]:
    return {role: server.token(user) for user, role in ROLES.items()}


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c
