"""Redis killed with SIGKILL right after a revocation (a crash, not a clean shutdown) and
restarted from its append-only file, configured as the redis role configures it: the revoked
token stays refused by every worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from service_support import REPO, RedisServer, Server, bearer, make_deployment
from signed_models import SigningKeys
from workers import every_worker, fresh, until_every_worker


def role_persistence() -> str:
    """The persistence settings of roles/redis (its defaults), as redis.conf lines."""
    defaults = yaml.safe_load((REPO / "roles/redis/defaults/main.yml").read_text())
    appendonly = "yes" if defaults["redis_appendonly"] else "no"
    return f'save ""\nappendonly {appendonly}\nappendfsync {defaults["redis_appendfsync"]}\n'


@pytest.fixture
def crashing(
    tmp_path: Path, trained_models: Path, model_keys: SigningKeys
) -> Iterator[tuple[Server, RedisServer]]:
    redis = RedisServer(
        tmp_path / "redis", "durable-redis-password-123", persistence=role_persistence()
    )
    redis.start()
    server = Server(make_deployment(tmp_path / "d", redis, trained_models, model_keys), workers=2)
    server.start()
    yield server, redis
    server.stop()
    redis.stop()


def _model_info(server: Server, token: str) -> httpx.Response:
    return fresh("GET", server.url + "/model/info", headers=bearer(token))


def test_revocation_survives_a_redis_crash(crashing: tuple[Server, RedisServer]) -> None:
    server, redis = crashing
    token = server.token("vera-viewer")
    until_every_worker(lambda: _model_info(server, token), server.workers,
                       lambda r: r.status_code == 200, "the token works")  # fmt: skip
    assert fresh("POST", server.url + "/token/revoke", headers=bearer(token)).status_code == 200
    redis.stop()  # SIGKILL at once: whatever Redis had not persisted is gone
    redis.start()  # same directory and port: it loads its append-only file
    # Back on Redis (not on a worker's local copy of the denylist): every worker is ready ...
    until_every_worker(
        lambda: fresh("GET", server.url + "/health/ready"),
        server.workers,
        lambda r: r.status_code == 200 and r.json().get("redis") == "up",
        "every worker uses Redis again",
    )
    # ... and Redis itself still has the revocation, so every worker refuses the token.
    assert redis.cli("ZCARD", "ml:revoked").strip() == "1"

    def refused(r: httpx.Response) -> None:
        assert r.status_code == 401, r.text

    every_worker(lambda: _model_info(server, token), server.workers, refused)
