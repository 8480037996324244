"""Everything the service keeps in Redis, each operation one round trip.

* rate limits (GCRA) and the revoked-token check in one Lua script per request;
* login attempts per (user name, client address), per address and per name (reserved
  before hashing), and the addresses known to be good for a name;
* the ``jti`` denylist (sorted set scored by token expiry);
* request id -> predicted classes for ``POST /feedback`` (any worker can take the feedback).

Outage handling: the first failing call marks Redis down; from then on no request
waits on Redis (callers fall back or answer 503 at once) and a background probe
pings it every ``redis_probe_seconds`` until it answers, then marks it up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import metrics
from .resp_pipe import PipedScript, RespPipe
from .settings import Limit, Settings

log = logging.getLogger("ml_service.redis")

# The rate-limit hits and denylist checks of every request that arrived while the previous
# call was in flight, in one script call (one round trip, one reply to parse for the batch):
# each hit is its own GCRA step, in arrival order, so a batch passes exactly as many requests
# as the same requests one by one would. ARGV[1] = n (requests), ARGV[2] = feedback ttl, then
# per request r: jti, interval, period (microseconds) at ARGV[3r .. 3r+2], its rate-limit key
# at KEYS[r + 1]; KEYS[1] = the denylist. Predictions queued for /feedback ride along
# (see remember_prediction): KEYS[n+2..] with "<version> <class of row 0> ..." at ARGV[3n+3..].
# The reply is 4 values per request: allowed (1, 0 or -1 for revoked), retry, remaining, reset.
_AUTHORIZE_LUA = """
local n = tonumber(ARGV[1])
for i = n + 2, #KEYS do
  local k = -1
  for word in string.gmatch(ARGV[i + 2 * n + 1], '%S+') do
    if k < 0 then redis.call('HSET', KEYS[i], 'v', word)
    else redis.call('HSET', KEYS[i], tostring(k), word) end
    k = k + 1
  end
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for r = 1, n do
  local key = KEYS[r + 1]
  local jti = ARGV[3 * r]
  local interval = tonumber(ARGV[3 * r + 1])
  local period = tonumber(ARGV[3 * r + 2])
  if jti ~= '' and redis.call('ZSCORE', KEYS[1], jti) then
    table.insert(out, -1); table.insert(out, 0); table.insert(out, 0); table.insert(out, 0)
  else
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - period
    if allow_at > now then
      table.insert(out, 0)
      table.insert(out, string.format('%d', allow_at - now))
      table.insert(out, 0)
      table.insert(out, string.format('%d', tat - now))
    else
      local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
      redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl_ms)
      table.insert(out, 1)
      table.insert(out, 0)
      table.insert(out, math.floor((period - (new_tat - now)) / interval))
      table.insert(out, string.format('%d', new_tat - now))
    end
  end
end
return out
"""

# The login throttle (docs/service.md). KEYS: [1] failures of the (name, address) pair,
# [2] failures of the address (any names), [3] the name's failures from addresses not known
# to be good for it (hash: n = count, t = ms when the next such attempt may start), [4] the
# addresses known to be good for the name (sorted set: address -> ms until which it is).
# Counters live one window from their first failure (fixed window).

# One attempt reserved atomically before the password is hashed, so a burst cannot pass the
# check before the first failures are counted. Refused (the wait in ms) while the pair or the
# address is at its limit, or, from an address not known to be good for the name, while the
# name's delay runs; else counted at once. Past ARGV[5] failures of the name, each one counted
# from an unknown address delays the next such attempt by 1 s, 2 s, 4 s ... up to ARGV[6] ms.
# ARGV: address, pair limit, address limit, window ms, delay after, delay max ms.
# Reply: {wait ms (0: reserved), name counted (1/0), the name's t before, t set (0: none),
# what refused: 1 pair, 2 address, 3 name delay (the longest wait)}.
_LOGIN_RESERVE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local wait, why = 0, 0
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then
  wait, why = math.max(redis.call('PTTL', KEYS[1]), 1), 1
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  local w = math.max(redis.call('PTTL', KEYS[2]), 1)
  if w > wait then wait, why = w, 2 end
end
local good = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0')
local known = good > now
local before = 0
if not known then
  before = tonumber(redis.call('HGET', KEYS[3], 't') or '0')
  if before - now > wait then wait, why = before - now, 3 end
end
if wait > 0 then return {wait, 0, 0, 0, why} end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
if known then return {0, 0, 0, 0, 0} end
local n = redis.call('HINCRBY', KEYS[3], 'n', 1)
if n == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
local past = n - tonumber(ARGV[5])
local set = 0
if past >= 0 then
  local delay = tonumber(ARGV[6])
  if past < 31 then delay = math.min(delay, 1000 * 2 ^ past) end
  set = now + delay
  redis.call('HSET', KEYS[3], 't', string.format('%d', set))
end
return {0, 1, before, set, 0}
"""

# The name's share of a reservation given back (an attempt that was no failure): its count,
# and its delay unless a later attempt has set a newer one. ARGV[2] = counted (1/0),
# ARGV[3] = the name's t before, ARGV[4] = the t the reservation set ('0': none).
_LOGIN_GIVE_BACK_NAME_LUA = """
if ARGV[2] == '1' and tonumber(redis.call('HGET', KEYS[3], 'n') or '0') > 0 then
  redis.call('HINCRBY', KEYS[3], 'n', -1)
  if ARGV[4] ~= '0' and redis.call('HGET', KEYS[3], 't') == ARGV[4] then
    if ARGV[3] == '0' then redis.call('HDEL', KEYS[3], 't')
    else redis.call('HSET', KEYS[3], 't', ARGV[3]) end
  end
end
"""

# A successful login: the pair's counter starts over, the address and the name get the
# attempt back, and the address is known to be good for the name for ARGV[5] ms (at most
# ARGV[6] addresses per name, the most recent ones). ARGV[1..4] as above.
_LOGIN_REFUND_LUA = (
    """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
"""
    + _LOGIN_GIVE_BACK_NAME_LUA
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local keep = tonumber(ARGV[5])
redis.call('ZADD', KEYS[4], string.format('%d', now + keep), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', now))
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[6]) - 1)
redis.call('PEXPIRE', KEYS[4], keep)
return 1
"""
)

# An attempt reserved but never hashed (the hash queue was full): every counter gets it back.
_LOGIN_RELEASE_LUA = (
    """
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
"""
    + _LOGIN_GIVE_BACK_NAME_LUA
    + """
return 1
"""
)

# Addresses kept as known good per name: the most recent ones (a bound on the set's size).
_KNOWN_ADDRESSES_MAX = 64

_REVOKE_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return 1
"""

_FEEDBACK_LUA = """
local predicted = redis.call('HGET', KEYS[1], ARGV[1])
if not predicted then return {-1, 0, ''} end
local label = tonumber(ARGV[2])
if label < 0 or label >= tonumber(ARGV[3]) then return {-2, 0, ''} end
redis.call('HDEL', KEYS[1], ARGV[1])
local correct = 0
if predicted == ARGV[2] then correct = 1 end
return {tonumber(predicted), correct, redis.call('HGET', KEYS[1], 'v') or ''}
"""


# ARGV[1] = ttl; ARGV[i + 1] = "<model version> <class of row 0> <class of row 1> ..." for KEYS[i]
_REMEMBER_LUA = """
for i, key in ipairs(KEYS) do
  local n = -1
  for word in string.gmatch(ARGV[i + 1], '%S+') do
    if n < 0 then redis.call('HSET', key, 'v', word)
    else redis.call('HSET', key, tostring(n), word) end
    n = n + 1
  end
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
"""
_REMEMBER_DELAY = 0.05
_POOL_SIZE = 16
_PIGGYBACK_MAX = 64
# Rate-limit hits per script call: bounds the time one call keeps Redis busy.
_AUTHORIZE_BATCH_MAX = 128


async def _once_more_on_a_new_connection(call):  # type: ignore[no-untyped-def]
    """A pooled connection that died with a restarted Redis fails before the command is sent;
    redis-py drops it, so the command is tried once more on a new connection before the worker
    falls back to its local state (which may not know a revocation made meanwhile). Were a
    rate-limit hit ever counted twice, the limit would be stricter, never looser."""
    try:
        return await call()
    except RedisConnectionError:
        return await call()


class RedisUnavailable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One reserved login attempt (``wait_ms`` 0) or a refusal (the ms until one is allowed,
    ``refused_by`` ``pair``, ``address`` or ``name``); the rest lets it be given back."""

    wait_ms: int
    refused_by: str = ""
    name_counted: bool = False
    name_delay_before: int = 0
    name_delay_set: int = 0


_REFUSED_BY = {0: "", 1: "pair", 2: "address", 3: "name"}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    revoked: bool
    limit: int
    remaining: int
    retry_after: int
    reset: int
    degraded: bool = False


class LocalLimiter:
    """Per-process GCRA used while Redis is down (each worker enforces it separately)."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}

    def hit(self, key: tuple[str, str], limit: Limit) -> Decision:
        now = time.monotonic()
        interval = limit.period_seconds / limit.limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - limit.period_seconds
        if allow_at > now:
            return Decision(
                False,
                False,
                limit.limit,
                0,
                max(1, math.ceil(allow_at - now)),
                math.ceil(tat - now),
                True,
            )
        self._tat[key] = new_tat
        if len(self._tat) > 100_000:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        remaining = int((limit.period_seconds - (new_tat - now)) / interval)
        return Decision(True, False, limit.limit, remaining, 0, math.ceil(new_tat - now), True)


class RedisState:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        timeout = settings.redis_timeout_seconds
        password = settings.redis_password
        # A bounded pool: a burst of requests shares a few connections instead of opening
        # (and authenticating) one each; waiting for a free one is bounded by the timeout.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=_POOL_SIZE,
            timeout=timeout,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
        self.client = aioredis.Redis(
            connection_pool=pool, retry_on_timeout=False, retry=None, decode_responses=False
        )
        p = settings.key_prefix
        self._rl = f"{p}:rl:"
        self._revoked = f"{p}:revoked"
        # loginfail:user:<name> (a string) was the per-name lockout: not reused for the hash.
        self._fail_pair = f"{p}:loginfail:pair:"
        self._fail_ip = f"{p}:loginfail:ip:"
        self._fail_name = f"{p}:loginfail:name:"
        self._good = f"{p}:loginfail:good:"
        self._pred = f"{p}:pred:"
        self._authorize: Callable[..., Awaitable[Any]]
        self._remember_script: Callable[..., Awaitable[Any]]
        try:
            # The calls every request makes: on a connection of their own (resp_pipe.py).
            self._pipe: RespPipe | None = RespPipe(settings.redis_url, password, timeout)
            self._authorize = PipedScript(self._pipe, _AUTHORIZE_LUA)
            self._remember_script = PipedScript(self._pipe, _REMEMBER_LUA)
        except ValueError:  # a URL only redis-py understands (TLS, a Unix socket)
            self._pipe = None
            self._authorize = self.client.register_script(_AUTHORIZE_LUA)
            self._remember_script = self.client.register_script(_REMEMBER_LUA)
        self._login_reserve = self.client.register_script(_LOGIN_RESERVE_LUA)
        self._login_refund = self.client.register_script(_LOGIN_REFUND_LUA)
        self._login_release = self.client.register_script(_LOGIN_RELEASE_LUA)
        self._revoke = self.client.register_script(_REVOKE_LUA)
        self._feedback = self.client.register_script(_FEEDBACK_LUA)
        self.up = False
        self.local_limiter = LocalLimiter()
        self.local_revoked: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._pending: list[tuple[str, str, list[int]]] = []
        self._flush_scheduled = False
        # Rate-limit hits waiting for the next authorize call: (key, jti, interval, period, reply)
        self._hits: list[tuple[str, str, int, int, asyncio.Future[list[bytes | int]]]] = []
        self._hits_running = False

    # ----- health -----

    def _mark_down(self, exc: BaseException) -> None:
        if self.up:
            log.error("redis unreachable, degraded mode: %s", exc.__class__.__name__)
        self.up = False
        metrics.REDIS_UP.set(0)

    def _mark_up(self) -> None:
        if not self.up:
            log.warning("redis reachable, normal mode")
        self.up = True
        metrics.REDIS_UP.set(1)

    async def probe(self) -> bool:
        try:
            await _once_more_on_a_new_connection(self.client.ping)
            if self._pipe is not None:  # the requests' connection too (opened here at start)
                await _once_more_on_a_new_connection(lambda: self._pipe.call("PING"))
            await self._sync_revoked()
        except (TimeoutError, RedisError, OSError) as exc:
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    async def _sync_revoked(self) -> None:
        # A local copy of the denylist keeps revocations effective through an outage.
        now = time.time()
        members: list[tuple[bytes, float]] = await self.client.zrangebyscore(
            self._revoked, now, "+inf", withscores=True
        )  # type: ignore[assignment]
        self.local_revoked = {m.decode(): float(s) for m, s in members}

    async def probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.redis_probe_seconds)
            await self.probe()

    async def _call(self, call):  # type: ignore[no-untyped-def]
        """Run one Redis command (a zero-argument callable making the coroutine), or raise
        RedisUnavailable so the worker falls back to its local state."""
        if not self.up:
            raise RedisUnavailable
        try:
            return await _once_more_on_a_new_connection(call)
        except (TimeoutError, RedisError, OSError) as exc:
            self._mark_down(exc)
            raise RedisUnavailable from exc

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self.client.aclose()

    # ----- requests -----

    async def authorize(self, user: str, endpoint_class: str, jti: str, limit: Limit) -> Decision:
        """Denylist check + one rate-limit hit, atomically; falls back to the local limiter.

        Concurrent requests share one script call (group commit): a hit queues here, the call
        in flight takes no new hits, and the next call takes all that queued meanwhile."""
        interval_us = max(1, round(limit.period_seconds * 1_000_000 / limit.limit))
        period_us = interval_us * limit.limit
        try:
            if not self.up:
                raise RedisUnavailable
            reply = asyncio.get_running_loop().create_future()
            self._hits.append(
                (f"{self._rl}{user}:{endpoint_class}", jti, interval_us, period_us, reply)
            )
            if not self._hits_running:
                self._hits_running = True
                task = asyncio.get_running_loop().create_task(self._authorize_queued())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            allowed, retry_us, remaining, reset_us = map(int, await reply)
        except RedisUnavailable:
            if jti in self.local_revoked:
                return Decision(False, True, limit.limit, 0, 0, 0, True)
            scaled = Limit(
                limit=max(1, int(limit.limit * self._settings.fallback_limit_factor)),
                period_seconds=limit.period_seconds,
            )
            return self.local_limiter.hit((user, endpoint_class), scaled)
        if allowed == -1:
            return Decision(False, True, limit.limit, 0, 0, 0)
        return Decision(
            allowed == 1,
            False,
            limit.limit,
            remaining,
            max(1, math.ceil(retry_us / 1_000_000)) if allowed == 0 else 0,
            math.ceil(reset_us / 1_000_000),
        )

    async def _authorize_queued(self) -> None:
        try:
            while self._hits:
                batch = self._hits[:_AUTHORIZE_BATCH_MAX]
                del self._hits[:_AUTHORIZE_BATCH_MAX]
                keys = [self._revoked, *(key for key, _, _, _, _ in batch)]
                args: list[str | int] = [len(batch), self._settings.feedback_ttl_seconds]
                for _, jti, interval_us, period_us, _ in batch:
                    args += [jti, interval_us, period_us]
                if self._pending:
                    queued = self._pending[:_PIGGYBACK_MAX]
                    del self._pending[:_PIGGYBACK_MAX]
                    keys += [self._pred + request_id for request_id, _, _ in queued]
                    args += [f"{version} {' '.join(map(str, c))}" for _, version, c in queued]
                try:
                    values = await self._call(
                        functools.partial(self._authorize, keys=keys, args=args)
                    )
                except BaseException as exc:
                    for *_, reply in batch:
                        if not reply.done():
                            reply.set_exception(RedisUnavailable())
                    if isinstance(exc, RedisUnavailable):
                        continue
                    raise
                for i, (*_, reply) in enumerate(batch):
                    if not reply.done():
                        reply.set_result(values[4 * i : 4 * i + 4])
        finally:
            self._hits_running = False
            for *_, reply in self._hits:  # left behind by a cancellation (shutdown)
                if not reply.done():
                    reply.set_exception(RedisUnavailable())
            self._hits.clear()

    def _login_keys(self, username: str, ip: str) -> list[str]:
        # A key with one variable part ends with it, so any characters are safe there; the
        # pair's key has two: the name in hex (no ':'), then the address as it is.
        return [
            f"{self._fail_pair}{username.encode().hex()}:{ip}",
            self._fail_ip + ip,
            self._fail_name + username,
            self._good + username,
        ]

    async def login_reserve(self, username: str, ip: str) -> LoginAttempt:
        """Reserve one login attempt (``wait_ms`` 0), or say how long until one is allowed."""
        s = self._settings
        wait, counted, before, set_at, why = await self._call(
            lambda: self._login_reserve(
                keys=self._login_keys(username, ip),
                args=[
                    ip,
                    s.login_max_failures_per_user,
                    s.login_max_failures_per_ip,
                    s.login_failure_window_seconds * 1000,
                    s.login_name_delay_after,
                    s.login_name_delay_max_seconds * 1000,
                ],
            )
        )
        return LoginAttempt(
            int(wait), _REFUSED_BY[int(why)], int(counted) == 1, int(before), int(set_at)
        )

    def _give_back(self, ip: str, attempt: LoginAttempt) -> list[str | int]:
        return [
            ip,
            int(attempt.name_counted),
            attempt.name_delay_before,
            attempt.name_delay_set,
        ]

    async def login_succeeded(self, username: str, ip: str, attempt: LoginAttempt) -> None:
        keep_ms = self._settings.login_known_address_days * 86_400_000
        args = [*self._give_back(ip, attempt), keep_ms, _KNOWN_ADDRESSES_MAX]
        await self._call(lambda: self._login_refund(keys=self._login_keys(username, ip), args=args))

    async def login_not_attempted(self, username: str, ip: str, attempt: LoginAttempt) -> None:
        args = self._give_back(ip, attempt)
        await self._call(
            lambda: self._login_release(keys=self._login_keys(username, ip), args=args)
        )

    async def revoke(self, jti: str, exp: int) -> None:
        await self._call(lambda: self._revoke(keys=[self._revoked], args=[jti, exp, time.time()]))
        self.local_revoked[jti] = exp

    def remember_prediction(self, request_id: str, classes: list[int], version: str) -> None:
        """Queue request id -> predicted classes for /feedback; the response does not wait.

        The queue rides along with the next request's rate-limit call (no extra round
        trip); whatever is still queued after ``_REMEMBER_DELAY`` is written on its own.
        """
        if not self.up:
            return
        self._pending.append((request_id, version, classes))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_REMEMBER_DELAY, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._remember(batch))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _remember(self, batch: list[tuple[str, str, list[int]]]) -> None:
        keys = [self._pred + request_id for request_id, _, _ in batch]
        args: list[str | int] = [self._settings.feedback_ttl_seconds]
        args += [f"{version} {' '.join(map(str, classes))}" for _, version, classes in batch]
        with contextlib.suppress(RedisUnavailable):
            await self._call(lambda: self._remember_script(keys=keys, args=args))

    async def feedback(
        self, request_id: str, instance: int, label: int, n_classes: int
    ) -> tuple[int, bool, str]:
        """Consume the stored prediction: (predicted class, correct, model version). Predicted
        is -1 when it is unknown, expired or already rated, -2 when the label is not a class."""
        predicted, correct, version = await self._call(
            lambda: self._feedback(
                keys=[self._pred + request_id], args=[str(instance), str(label), n_classes]
            )
        )
        return (
            int(predicted),
            bool(correct),
            version.decode() if isinstance(version, bytes) else str(version),
        )
