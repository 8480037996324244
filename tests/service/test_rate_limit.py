"""Rate limits: atomic across 2 workers, per user, per endpoint class, with 429 headers."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from service_support import (
    LIMIT,
    LIMITED_PASSWORD,
    LIMITED_USERS,
    ROW,
    Deployment,
    RedisServer,
    Server,
    bearer,
)
from workers import fresh

ROUNDS = 20
CONCURRENT = 100


def _reset(redis: RedisServer) -> None:
    redis.cli("DEL", *(f"ml:rl:{u}:predict" for u in LIMITED_USERS))


async def _burst(
    url: str, plan: list[str], tokens: dict[str, str]
) -> list[tuple[str, httpx.Response]]:
    limits = httpx.Limits(max_connections=CONCURRENT * 2, max_keepalive_connections=CONCURRENT * 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(user: str) -> tuple[str, httpx.Response]:
            r = await client.post("/predict", json={"features": ROW}, headers=bearer(tokens[user]))
            return user, r

        return await asyncio.gather(*(one(u) for u in plan))


def test_exactly_limit_pass_out_of_100_concurrent_20_times(
    server: Server, redis_server: RedisServer
) -> None:
    tokens = {u: server.token(u, LIMITED_PASSWORD) for u in LIMITED_USERS}
    user = LIMITED_USERS[0]
    for round_no in range(ROUNDS):
        _reset(redis_server)
        results = asyncio.run(_burst(server.url, [user] * CONCURRENT, tokens))
        statuses = Counter(r.status_code for _, r in results)
        assert statuses == {200: LIMIT, 429: CONCURRENT - LIMIT}, f"round {round_no}: {statuses}"
        for _, r in results:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.headers["ratelimit-limit"] == str(LIMIT)
                assert r.headers["ratelimit-remaining"] == "0"
                assert r.json()["error"]["code"] == "rate_limited"


def test_users_do_not_share_budgets(server: Server, redis_server: RedisServer) -> None:
    tokens = {u: server.token(u, LIMITED_PASSWORD) for u in LIMITED_USERS}
    _reset(redis_server)
    plan = [LIMITED_USERS[i % 2] for i in range(CONCURRENT)]
    results = asyncio.run(_burst(server.url, plan, tokens))
    passed = Counter(u for u, r in results if r.status_code == 200)
    assert passed == {LIMITED_USERS[0]: LIMIT, LIMITED_USERS[1]: LIMIT}
    assert all(r.status_code in (200, 429) for _, r in results)


def test_endpoint_classes_have_separate_budgets(server: Server, redis_server: RedisServer) -> None:
    user = LIMITED_USERS[0]
    token = server.token(user, LIMITED_PASSWORD)
    _reset(redis_server)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        statuses = [
            client.post("/predict", json={"features": ROW}, headers=bearer(token)).status_code
            for _ in range(LIMIT + 2)
        ]
        assert statuses == [200] * LIMIT + [429, 429]
        # the 'read' class (model info) is untouched by the exhausted 'predict' budget
        r = client.get("/model/info", headers=bearer(token))
        assert r.status_code == 200
        assert int(r.headers["ratelimit-limit"]) > LIMIT


def _rate_limited_total(server: Server, metrics_token: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=bearer(metrics_token)).text
    prefix = 'ml_api_rate_limited_total{endpoint_class="predict"}'
    lines = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_rate_limited_requests_are_counted(
    server: Server, redis_server: RedisServer, deployment: Deployment
) -> None:
    user = LIMITED_USERS[1]
    token = server.token(user, LIMITED_PASSWORD)
    _reset(redis_server)
    before = _rate_limited_total(server, deployment.metrics_token)
    extra = 3
    statuses = [
        fresh("POST", server.url + "/predict", json={"features": ROW}, headers=bearer(token))
        for _ in range(LIMIT + extra)
    ]
    assert [r.status_code for r in statuses] == [200] * LIMIT + [429] * extra
    # Counted on whichever worker refused, summed over the workers by /metrics.
    assert _rate_limited_total(server, deployment.metrics_token) - before == extra
