"""Reaching every uvicorn worker: one fresh connection per request, and the answering worker
read from ``X-Worker-Id`` (sent only with ``ML_SERVICE_EXPOSE_WORKER_ID=1``, which only the
tests set). Over one keep-alive connection every request would reach the same worker."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from waiting import DEFAULT_TIMEOUT

WORKER_HEADER = "x-worker-id"
# Tells the service to name its workers (see docs/service.md); the tests' servers set it.
EXPOSE_WORKER_ENV = {"ML_SERVICE_EXPOSE_WORKER_ID": "1"}

Send = Callable[[], httpx.Response]


def fresh(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: object = None,
    data: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> httpx.Response:
    """One request on its own new connection, closed afterwards."""
    with httpx.Client(timeout=timeout) as c:
        return c.request(
            method, url, headers={"Connection": "close", **(headers or {})}, json=json, data=data
        )


def worker_of(r: httpx.Response) -> str:
    worker = r.headers.get(WORKER_HEADER)
    assert worker, f"no {WORKER_HEADER} header: is ML_SERVICE_EXPOSE_WORKER_ID set? {r.headers}"
    return worker


def every_worker(
    send: Send,
    workers: int,
    check: Callable[[httpx.Response], None],
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, int]:
    """Send until each of ``workers`` workers has answered, ``check`` every answer (it raises
    on a wrong one); return how many answers each worker gave."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        r = send()
        check(r)
        w = worker_of(r)
        seen[w] = seen.get(w, 0) + 1
        if time.monotonic() > deadline:
            raise AssertionError(f"only workers {sorted(seen)} answered in {timeout:.0f}s")
    assert len(seen) == workers, f"more workers than expected: {seen}"
    return seen


def until_every_worker(
    send: Send,
    workers: int,
    ok: Callable[[httpx.Response], bool],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> set[str]:
    """Send until each of ``workers`` workers has given an answer for which ``ok`` holds
    (earlier answers may not: the event is on its way); fail after ``timeout``."""
    done: set[str] = set()
    others: set[str] = set()
    last: httpx.Response | None = None
    deadline = time.monotonic() + timeout
    while len(done) < workers:
        if time.monotonic() > deadline:
            detail = last.text[:300] if last is not None else None
            raise AssertionError(
                f"timed out waiting for every worker: {what}; done {sorted(done)}, "
                f"not yet {sorted(others - done)}; last answer {detail!r}"
            )
        last = send()
        w = worker_of(last)
        (done if ok(last) else others).add(w)
    assert len(done) == workers, f"more workers than expected: {done}"
    return done
