"""The per-request Redis connection (ml_service/resp_pipe.py) against a real redis-server:
replies in order under concurrency, error replies, a forgotten script, a wrong password, a
Redis that hangs (SIGSTOP) and one that is killed and comes back."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from service_support import RedisServer

from ml_service.resp_pipe import Endpoint, PipedScript, RespPipe, _Incomplete, pack, parse


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: these tests stop, kill and flush it."""
    server = RedisServer(tmp_path / "redis", secrets.token_urlsafe(24))
    server.start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def pipe_to(redis: RedisServer, timeout: float = 2.0, password: str | None = None) -> RespPipe:
    return RespPipe(f"redis://127.0.0.1:{redis.port}/0", password or redis.password, timeout)


def test_replies_come_back_to_their_own_callers_in_order(own_redis: RedisServer) -> None:
    async def run() -> list[object]:
        pipe = pipe_to(own_redis)
        try:
            return list(await asyncio.gather(*(pipe.call("INCR", "n") for _ in range(200))))
        finally:
            await pipe.close()

    assert asyncio.run(run()) == list(range(1, 201))


def test_value_types_and_error_replies(own_redis: RedisServer) -> None:
    async def run() -> None:
        pipe = pipe_to(own_redis)
        try:
            assert await pipe.call("SET", "k", "v\r\nwith a line break") == b"OK"
            assert await pipe.call("GET", "k") == b"v\r\nwith a line break"
            assert await pipe.call("GET", "missing") is None
            assert await pipe.call("RPUSH", "l", "a", "", 3) == 3
            assert await pipe.call("LRANGE", "l", 0, -1) == [b"a", b"", b"3"]
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await pipe.call("INCR", "l")
            assert await pipe.call("PING") == b"PONG"  # the connection survives an error reply
        finally:
            await pipe.close()

    asyncio.run(run())


def test_a_script_redis_has_forgotten_is_sent_again(own_redis: RedisServer) -> None:
    async def run() -> tuple[object, object]:
        pipe = pipe_to(own_redis)
        script = PipedScript(pipe, "return {tonumber(ARGV[1]) + 1, KEYS[1]}")
        try:
            first = await script(keys=["key"], args=[41])
            await pipe.call("SCRIPT", "FLUSH")
            return first, await script(keys=["key"], args=[1])
        finally:
            await pipe.close()

    assert asyncio.run(run()) == ([42, b"key"], [2, b"key"])


def test_a_wrong_password_is_an_authentication_error(own_redis: RedisServer) -> None:
    async def run() -> None:
        pipe = pipe_to(own_redis, password="not-" + own_redis.password)
        try:
            await pipe.call("PING")
        finally:
            await pipe.close()

    with pytest.raises(AuthenticationError):
        asyncio.run(run())


def test_a_hung_redis_times_out_and_the_next_call_uses_a_new_connection(
    own_redis: RedisServer,
) -> None:
    assert own_redis.proc is not None
    pid = own_redis.proc.pid

    async def run() -> float:
        pipe = pipe_to(own_redis, timeout=0.5)
        try:
            before = await pipe.call("CLIENT", "ID")
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            calls = [pipe.call("INCR", "n") for _ in range(3)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            waited = time.monotonic() - started
            assert all(isinstance(r, TimeoutError | RedisConnectionError) for r in results)
            os.kill(pid, signal.SIGCONT)
            # The late replies of the dropped connection are nobody's: the counter is read on
            # a new one, and it counts what Redis executed, whatever the callers were told.
            assert await pipe.call("INCR", "n") == 4
            assert await pipe.call("CLIENT", "ID") != before
            return waited
        finally:
            await pipe.close()

    waited = asyncio.run(run())
    assert waited < 1.5, f"the calls waited {waited:.2f} s for a 0.5 s timeout"


def test_a_killed_redis_fails_calls_fast_and_a_restarted_one_is_reached_again(
    own_redis: RedisServer,
) -> None:
    async def run() -> None:
        pipe = pipe_to(own_redis)
        try:
            assert await pipe.call("PING") == b"PONG"
            own_redis.stop()
            started = time.monotonic()
            with pytest.raises(RedisConnectionError):
                await pipe.call("PING")
            assert time.monotonic() - started < 1.0
            own_redis.start()
            assert await pipe.call("PING") == b"PONG"
        finally:
            await pipe.close()

    asyncio.run(run())


def test_parse_waits_for_every_split_of_a_reply() -> None:
    reply = b"*5\r\n:1\r\n$-1\r\n$6\r\nab\r\ncd\r\n*2\r\n+OK\r\n-ERR no\r\n:-7\r\n"
    for cut in range(len(reply)):
        with pytest.raises(_Incomplete):
            parse(reply[:cut])
    value, end = parse(reply)
    assert end == len(reply)
    assert value[:4] == [1, None, b"ab\r\ncd", [b"OK", value[3][1]]]  # type: ignore[index]
    assert isinstance(value[3][1], ResponseError) and value[4] == -7  # type: ignore[index]


def test_pack_is_resp_bulk_strings() -> None:
    packed = b"*3\r\n$7\r\nEVALSHA\r\n$3\r\n\x00\r\n\r\n$2\r\n12\r\n"
    assert pack(["EVALSHA", b"\x00\r\n", 12]) == packed


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", Endpoint("127.0.0.1", 6380, 2, None)),
        ("redis://ml-api@redis:6379/0", Endpoint("redis", 6379, 0, "ml-api")),
        ("redis://redis", Endpoint("redis", 6379, 0, None)),
    ],
)
def test_endpoints_from_urls(url: str, expected: Endpoint) -> None:
    assert Endpoint.from_url(url) == expected


@pytest.mark.parametrize("url", ["rediss://redis:6379/0", "unix:///run/redis.sock", "redis://"])
def test_urls_it_cannot_serve_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.from_url(url)
