"""Waiting for an event instead of sleeping: poll the observable result until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Generous: the machine running the suite may be loaded. A test that waits this long has
# failed, it does not pass later.
DEFAULT_TIMEOUT = 30.0


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until it returns something truthy and return that; fail after ``timeout``
    seconds with ``what`` (the event waited for) and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)
