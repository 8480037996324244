"""One pipelined Redis connection for the per-request script call, without redis-py's layers.

redis-py spent ~200 µs of Python per call at concurrency 1 (the blocking pool's condition,
``asyncio.timeout``, retry wrappers, command packing through several layers, the RESP3
parser reading line by line): a third of a request's CPU, more than the script itself costs
Redis. This connection is an ``asyncio.Protocol``: a call is one ``transport.write`` of the
packed command, and ``data_received`` parses the replies (RESP2) and hands them out in
order. Everything else the service keeps in Redis still goes through redis-py.

Failures are redis-py's exception types, so ``RedisState._call`` treats them alike:
``ConnectionError`` when the connection cannot be made or is lost (every call waiting on it
fails; the next call opens a new one), ``TimeoutError`` when a reply does not come within
the timeout (the connection is dropped, and a Redis that answers again starts afresh),
``ResponseError`` for an error reply.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

Arg = str | int | bytes
Reply = bytes | int | list["Reply"] | None


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def pack(args: Sequence[Arg]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Reply | ResponseError, int]:
    """One RESP2 reply from ``buf`` at ``pos``: (value, position after it). An error reply
    is returned as a ``ResponseError`` (an error inside an array too); ``_Incomplete`` when the
    reply is not all there yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos], buf[pos + 1 : end], end + 2
    if kind == 58:  # ':'
        return int(line), pos
    if kind == 36:  # '$'
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 42:  # '*'
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)  # type: ignore[arg-type]
        return items, pos
    if kind == 43:  # '+'
        return bytes(line), pos
    if kind == 45:  # '-'
        return ResponseError(bytes(line).decode(errors="replace")), pos
    raise RedisConnectionError(f"unexpected byte {kind!r} in a Redis reply")


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect, from a ``redis://[user@]host[:port][/db]`` URL."""

    host: str
    port: int
    db: int
    username: str | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"only redis://host URLs are supported here, not {url!r}")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname,
            port=parts.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
        )


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.buffer = bytearray()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf) and self.waiting:
                try:
                    value, pos = parse(buf, pos)
                except _Incomplete:
                    break
                waiter = self.waiting.popleft()
                if waiter.done():  # timed out: the connection is being dropped anyway
                    continue
                if isinstance(value, ResponseError):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
        except (ValueError, RedisConnectionError) as exc:  # garbled: nothing after it is safe
            self.fail(RedisConnectionError(f"bad Redis reply: {exc}"))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("connection to Redis lost"))

    def fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(RedisConnectionError(str(exc)))
        if self.transport is not None:
            self.transport.abort()


class RespPipe:
    """Calls on one connection, replies in order; opened on first use and after a loss."""

    def __init__(self, url: str, password: str | None, timeout: float) -> None:
        self._endpoint = Endpoint.from_url(url)
        self._password = password
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        # Shielded: a cancelled caller leaves the connection to the others waiting for it.
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        e = self._endpoint
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, e.host, e.port), self._timeout
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from None
        hello: list[list[Arg]] = []
        if self._password is not None:
            auth: list[Arg] = ["AUTH", self._password]
            if e.username is not None:
                auth.insert(1, e.username)
            hello.append(auth)
        if e.db:
            hello.append(["SELECT", e.db])
        try:
            for command in hello:
                await self._send(protocol, command)
        except ResponseError as exc:
            protocol.fail(exc)
            raise AuthenticationError(str(exc)) from None
        self._protocol = protocol
        return protocol

    def _send(self, protocol: _Protocol, args: Sequence[Arg]) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Reply] = loop.create_future()
        protocol.waiting.append(reply)
        assert protocol.transport is not None
        protocol.transport.write(pack(args))
        timer = loop.call_later(self._timeout, _time_out, protocol, reply, self._timeout)
        reply.add_done_callback(lambda _: timer.cancel())
        return reply

    async def call(self, *args: Arg) -> Reply:
        """Send one command and return its reply (raises as the module docstring says)."""
        return await self._send(await self._connected(), args)

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


def _time_out(protocol: _Protocol, reply: asyncio.Future[Reply], timeout: float) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError(f"no reply from Redis within {timeout} s"))
        protocol.fail(TimeoutError("a reply timed out"))


class PipedScript:
    """A Lua script called by its SHA-1 (``EVALSHA``), sent whole once when Redis lacks it."""

    def __init__(self, pipe: RespPipe, source: str) -> None:
        self._pipe = pipe
        self._source = source
        # Redis names a script by its SHA-1: an identifier here, not a security property.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        try:
            return await self._pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # EVAL runs the script and caches it (a flushed or restarted Redis has forgotten it).
        return await self._pipe.call("EVAL", self._source, len(keys), *keys, *args)
