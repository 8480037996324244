"""What Alertmanager posted to a test machine's webhook sink (molecule/shared/files/webhook_sink.py,
run by molecule/shared/prepare.yml), polling for it, and the delays the tests measured."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

SINK_LOG = "/var/lib/webhook-sink/posts.jsonl"

# Measured delays (name, seconds); report_timings prints them at the end of the run.
TIMINGS: list[tuple[str, float]] = []


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 3) -> Any:
    """Poll ``check`` until it returns something truthy; its last result on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def sink_posts(host) -> list[dict[str, Any]]:
    """Every body the webhook sink of the testinfra ``host`` has received so far."""
    out = host.run(f"cat {SINK_LOG} 2>/dev/null").stdout
    return [json.loads(line)["body"] for line in out.splitlines() if line.strip()]


def alert_posts(posts: list[dict[str, Any]], status: str, **labels: str) -> list[dict[str, Any]]:
    """Alerts of the given status and labels in the posted notifications."""
    return [
        alert
        for post in posts
        for alert in post.get("alerts", [])
        if alert.get("status") == status
        and all(alert.get("labels", {}).get(k) == v for k, v in labels.items())
    ]


def report_timings(terminalreporter) -> None:
    """Print the measured delays once (several conftest files call this)."""
    for name, seconds in TIMINGS:
        terminalreporter.write_line(f"alerting timing: {name}: {seconds:.0f} s")
    TIMINGS.clear()
