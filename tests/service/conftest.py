"""Session fixtures: a real redis-server, signed models, and the API under uvicorn (2 workers)."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from signed_models import SigningKeys, make_keys, make_signed_model


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
def new_deployment(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    trained_models: Path,
    model_keys: SigningKeys,
) -> Callable[[str, dict[str, str]], Deployment]:
    """Makes a deployment of its own: a copy of the trained models, the usual users, the shared
    Redis (give it its own ML_SERVICE_KEY_PREFIX, so that it does not see the others' state)."""

    def make(name: str, extra: dict[str, str]) -> Deployment:
        root = tmp_path_factory.mktemp(name)
        return make_deployment(root, redis_server, trained_models, model_keys, extra)

    return make


@pytest.fixture(scope="session")
def deployment(new_deployment: Callable[[str, dict[str, str]], Deployment]) -> Deployment:
    return new_deployment(
        "deployment",
        {
            "ML_SERVICE_USER_RATE_LIMITS": limited_overrides(),
            "ML_SERVICE_LOGIN_MAX_FAILURES_PER_IP": "20",
        },
    )


@pytest.fixture(scope="session")
def server(deployment: Deployment) -> Iterator[Server]:
    """The shared API: 2 workers. Tests must not change its model or stop its Redis."""
    srv = Server(deployment, workers=2)
    srv.start()
    yield srv
    srv.stop()


_issued: dict[str, Any] = {}
# Access tokens live 15 minutes (the service's default, which test_tokens checks); a whole
# run on a loaded machine takes longer, so the shared tokens are renewed well before that.
_RENEW_AFTER_SECONDS = 600


@pytest.fixture
def tokens(server: Server) -> dict[str, str]:
    """An access token per role for the session's server, renewed after 10 minutes."""
    if not _issued or time.monotonic() - _issued["at"] > _RENEW_AFTER_SECONDS:
        _issued["tokens"] = {role: server.token(user) for user, role in ROLES.items()}
        _issued["at"] = time.monotonic()
    return dict(_issued["tokens"])


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c
