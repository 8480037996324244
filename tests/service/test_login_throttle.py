"""The login throttle slows attackers, not users: failures count per (name, address) pair and
per address; a name guessed at from many addresses gets a growing delay, which its owner at an
address known to be good for it never sees (issue 18).

Clients at distinct addresses are real source addresses: the client socket is bound to
127.0.0.x / 127.0.y.x (loopback is a /8 on Linux), and the server sees that peer. The module has
its own server and Redis key prefix; its names and addresses are its own.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from service_support import NewDeployment, Server, bearer, running
from waiting import wait_until

PREFIX = "throttle"
PASSWORD = "throttle user password 1"
PER_PAIR = 5  # ML_SERVICE_LOGIN_MAX_FAILURES_PER_USER (default): per name from one address
PER_ADDRESS = 50  # ML_SERVICE_LOGIN_MAX_FAILURES_PER_IP (default)
DELAY_AFTER = 10  # ML_SERVICE_LOGIN_NAME_DELAY_AFTER (default)
DELAY_MAX = 3  # ML_SERVICE_LOGIN_NAME_DELAY_MAX_SECONDS: 30 by default, 3 here (1, 2, 3, 3 s)
WINDOW = 900  # ML_SERVICE_LOGIN_FAILURE_WINDOW_SECONDS (default)
USERS = ("xavier", "yolanda", "olga", "resetter", "pat")


@pytest.fixture(scope="module")
def throttle(new_deployment: NewDeployment) -> Iterator[Server]:
    d = new_deployment(
        "throttle",
        {
            "ML_SERVICE_KEY_PREFIX": PREFIX,
            "ML_SERVICE_LOGIN_NAME_DELAY_MAX_SECONDS": str(DELAY_MAX),
            # A proxy on 127.0.0.1 or anywhere in 127.0.1.0/24 is believed (CIDR, like the
            # deployment's proxy network); the clients at 127.0.0.2 ... are not proxies.
            "ML_SERVICE_FORWARDED_ALLOW_IPS": "127.0.0.1,127.0.1.0/24",
            # Bursts share 16 pooled Redis connections per worker (see test_review_findings).
            "ML_SERVICE_REDIS_TIMEOUT_SECONDS": "5",
        },
    )
    for name in USERS:
        d.add_user(name, "viewer", PASSWORD)
    with running(d) as srv:
        yield srv


def login(
    server: Server, user: str, password: str, source: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """One login from the client address ``source`` (its own connection)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as c:
        return c.post(
            "/token", data={"username": user, "password": password}, headers=headers or {}
        )


async def _logins(
    url: str, attempts: list[tuple[str, str, str]], at_once: int
) -> list[httpx.Response]:
    """(user, password, source address) each on its own connection, ``at_once`` in flight."""
    gate = asyncio.Semaphore(at_once)

    async def one(user: str, password: str, source: str) -> httpx.Response:
        async with gate:
            transport = httpx.AsyncHTTPTransport(local_address=source)
            async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as c:
                return await c.post("/token", data={"username": user, "password": password})

    return await asyncio.gather(*(one(*a) for a in attempts))


def concurrently(
    server: Server, attempts: list[tuple[str, str, str]], at_once: int | None = None
) -> list[httpx.Response]:
    return asyncio.run(_logins(server.url, attempts, at_once or len(attempts)))


def retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "rate_limited"
    return int(r.headers["retry-after"])


def hashes(server: Server) -> float:
    r = httpx.get(
        server.url + "/metrics", headers=bearer(server.deployment.metrics_token), timeout=10
    )
    assert r.status_code == 200, r.text
    samples = re.findall(r"^ml_api_login_hashes_total(?:\{[^}]*\})? (\S+)$", r.text, re.M)
    return sum(float(v) for v in samples)


def let_in_after_the_delay(server: Server, user: str, password: str, source: str) -> None:
    """Try from ``source`` until the attempt is no longer refused; it must then fail (401).
    Refused attempts count nothing, so trying again costs the throttle nothing."""

    def attempt() -> httpx.Response | None:
        r = login(server, user, password, source)
        return None if r.status_code == 429 else r

    r = wait_until(attempt, f"{source} to be let in for {user}", DELAY_MAX + 15, interval=0.1)
    assert r.status_code == 401, r.text


def redis(server: Server, *args: str) -> str:
    return server.deployment.redis.cli(*args).strip()


def pair_key(user: str, address: str) -> str:
    return f"{PREFIX}:loginfail:pair:{user.encode().hex()}:{address}"


# ----- per (name, address) and per address: a stranger throttles only the stranger


def test_a_strangers_failures_lock_out_only_the_stranger(throttle: Server) -> None:
    a, b, c = "127.0.0.3", "127.0.0.4", "127.0.0.5"
    failed = [login(throttle, "xavier", f"guess {i}", a) for i in range(60)]
    statuses = [r.status_code for r in failed]
    assert statuses == [401] * PER_PAIR + [429] * (60 - PER_PAIR), statuses
    # Refused until the window ends (counted from the first failure).
    assert WINDOW - 60 < retry_after(failed[-1]) <= WINDOW

    # The owner, from another address, is let in at once.
    assert login(throttle, "xavier", PASSWORD, b).status_code == 200
    # The stranger stays refused for that name, even with the right password.
    assert WINDOW - 60 < retry_after(login(throttle, "xavier", PASSWORD, a)) <= WINDOW

    # The stranger sprays made-up names: the address has 50 failures in all, then is refused.
    spray = [(f"made-up-{i}", "password123456", a) for i in range(PER_ADDRESS)]
    statuses = Counter(r.status_code for r in concurrently(throttle, spray, at_once=8))
    assert statuses == {401: PER_ADDRESS - PER_PAIR, 429: PER_PAIR}, statuses
    assert redis(throttle, "GET", f"{PREFIX}:loginfail:ip:{a}") == str(PER_ADDRESS)
    # Now for every name, even a real one with its right password ...
    assert retry_after(login(throttle, "yolanda", PASSWORD, a)) > WINDOW - 120
    # ... but only there: the other addresses log in.
    assert login(throttle, "xavier", PASSWORD, b).status_code == 200
    assert login(throttle, "yolanda", PASSWORD, c).status_code == 200
    assert login(throttle, "xavier", PASSWORD, c).status_code == 200


# ----- per name, across addresses: a growing delay, not for the owner's known address


def test_distributed_guessing_is_delayed_but_not_for_the_owners_address(
    throttle: Server,
) -> None:
    home = "127.0.0.2"
    assert login(throttle, "olga", PASSWORD, home).status_code == 200  # now known good
    members = redis(throttle, "ZRANGE", f"{PREFIX}:loginfail:good:olga", "0", "-1")
    assert members.split() == [home], members

    # Guessing from many addresses, one or two guesses each: the first 10 pass at once.
    first = [("olga", f"guess {i}", f"127.0.3.{i + 1}") for i in range(DELAY_AFTER)]
    assert [r.status_code for r in concurrently(throttle, first, at_once=4)] == [401] * 10

    waits = []
    for step in range(4):
        source = f"127.0.3.{100 + step}"
        waits.append(retry_after(login(throttle, "olga", "one more guess", source)))
        if step >= 2:  # a 3 s delay runs: time enough for what follows to happen within it
            # The owner at a new address waits like everyone else (not counted) ...
            assert retry_after(login(throttle, "olga", PASSWORD, "127.0.3.200")) >= 1
        # ... but not at home: there the right password works right away ...
        assert login(throttle, "olga", PASSWORD, home).status_code == 200
        if step == 2:
            # ... and a typo there is an ordinary failure (401, counted for that pair only).
            assert login(throttle, "olga", "typo", home).status_code == 401
            assert login(throttle, "olga", PASSWORD, home).status_code == 200
        # Once the delay is over the guess is let through (and fails): the next delay doubles.
        let_in_after_the_delay(throttle, "olga", "one more guess", source)
    # 1 s after the 10th failure, then doubling with each failure, capped at DELAY_MAX.
    assert waits == [1, 2, 3, 3], waits
    # Refused attempts are not failures: 10 + 4 counted, whatever the probes sent.
    assert redis(throttle, "HGET", f"{PREFIX}:loginfail:name:olga", "n") == "14"


# ----- the race: reserved before hashing, so a burst passes no more than the limit


def test_a_burst_for_one_pair_passes_only_the_limit(throttle: Server) -> None:
    before = hashes(throttle)
    burst = [("racer", f"guess {i}", "127.0.0.6") for i in range(40)]
    statuses = Counter(r.status_code for r in concurrently(throttle, burst))
    assert statuses == {401: PER_PAIR, 429: 40 - PER_PAIR}, statuses
    assert redis(throttle, "GET", pair_key("racer", "127.0.0.6")) == str(PER_PAIR)
    assert hashes(throttle) - before == PER_PAIR  # no 429 cost a password hash


def test_a_burst_for_one_name_from_many_addresses_stops_at_the_delay(throttle: Server) -> None:
    before = hashes(throttle)
    burst = [("swarmed", f"guess {i}", f"127.0.4.{i + 1}") for i in range(30)]
    statuses = Counter(r.status_code for r in concurrently(throttle, burst))
    # The 10th failure starts a 1 s delay; a burst longer than that lets one more through.
    assert DELAY_AFTER <= statuses[401] <= DELAY_AFTER + 1, statuses
    assert statuses[401] + statuses[429] == 30, statuses
    assert redis(throttle, "HGET", f"{PREFIX}:loginfail:name:swarmed", "n") == str(statuses[401])
    assert hashes(throttle) - before == statuses[401]


# ----- a success starts the pair over and makes the address known good


def test_success_starts_the_pair_over(throttle: Server) -> None:
    source = "127.0.0.7"
    for i in range(PER_PAIR - 1):
        assert login(throttle, "resetter", f"guess {i}", source).status_code == 401
    assert redis(throttle, "GET", pair_key("resetter", source)) == str(PER_PAIR - 1)
    assert login(throttle, "resetter", PASSWORD, source).status_code == 200
    assert redis(throttle, "EXISTS", pair_key("resetter", source)) == "0"
    # The address got the successful attempt back: only the failures count.
    assert redis(throttle, "GET", f"{PREFIX}:loginfail:ip:{source}") == str(PER_PAIR - 1)
    # A whole allowance again, then refused.
    for i in range(PER_PAIR):
        assert login(throttle, "resetter", f"again {i}", source).status_code == 401
    assert retry_after(login(throttle, "resetter", PASSWORD, source)) > WINDOW - 60
    # Known good for 30 days (ML_SERVICE_LOGIN_KNOWN_ADDRESS_DAYS): the name's failures from
    # there were not counted against the name.
    score = redis(throttle, "ZSCORE", f"{PREFIX}:loginfail:good:resetter", source)
    now_ms = float(redis(throttle, "TIME").split()[0]) * 1000
    assert abs(float(score) - now_ms - 30 * 86_400_000) < 120_000, (score, now_ms)
    assert redis(throttle, "HGET", f"{PREFIX}:loginfail:name:resetter", "n") == str(PER_PAIR - 1)


# ----- the client address behind a proxy in a trusted network (CIDR)


def _audited_addresses(server: Server, request_ids: list[str]) -> list[str | None]:
    by_id = {}
    for line in server.deployment.audit_log.read_text().splitlines():
        record = json.loads(line)
        by_id[record.get("request_id")] = record.get("client_ip")
    return [by_id.get(i) for i in request_ids]


def test_forwarded_for_is_believed_from_the_proxy_network_only(throttle: Server) -> None:
    proxy, outsider = "127.0.1.7", "127.0.0.9"  # in 127.0.1.0/24; outside it
    forwarded = [
        login(throttle, "pat", f"guess {i}", proxy, {"X-Forwarded-For": "192.0.2.10"})
        for i in range(PER_PAIR + 1)
    ]
    assert [r.status_code for r in forwarded] == [401] * PER_PAIR + [429]
    # Another client behind the same proxy is another address: not refused.
    other = login(throttle, "pat", PASSWORD, proxy, {"X-Forwarded-For": "192.0.2.11"})
    assert other.status_code == 200
    # From outside the network the header is not believed: the peer is the client.
    forged = login(throttle, "pat", "guess", outsider, {"X-Forwarded-For": "192.0.2.10"})
    assert forged.status_code == 401
    ids = [r.headers["x-request-id"] for r in (forwarded[0], other, forged)]
    assert _audited_addresses(throttle, ids) == ["192.0.2.10", "192.0.2.11", outsider]
