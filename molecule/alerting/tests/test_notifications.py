"""Alerts reach the webhook: a stopped target fires TargetDown and its start resolves it; a
down API target mutes the API's own alerts (inhibition)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import TIMINGS, wait_for

EXPORTER = "prometheus-node-exporter.service"


def _alert_posts(posts: list[dict[str, Any]], status: str, **labels: str) -> list[dict[str, Any]]:
    """Alerts of the given status and labels in the posted notifications."""
    return [
        alert
        for post in posts
        for alert in post.get("alerts", [])
        if alert.get("status") == status
        and all(alert.get("labels", {}).get(k) == v for k, v in labels.items())
    ]


@pytest.mark.timeout(900)
def test_stopped_target_fires_and_its_start_resolves(host, sink_posts):
    instance = host.ansible.get_variables()["inventory_hostname"]
    wanted = {"alertname": "TargetDown", "job": "node", "instance": instance}
    seen = len(sink_posts())
    assert host.run(f"systemctl stop {EXPORTER}").rc == 0
    stopped = time.monotonic()
    try:
        # TargetDown waits 5 minutes (for: 5m), then one group_wait, then the post.
        firing = wait_for(lambda: _alert_posts(sink_posts()[seen:], "firing", **wanted), 480, 5)
    finally:
        assert host.run(f"systemctl start {EXPORTER}").rc == 0
    started = time.monotonic()
    assert firing, f"no firing TargetDown for {instance} within 8 min: {sink_posts()[seen:]}"
    TIMINGS.append(("node-exporter stopped -> firing TargetDown at the webhook", started - stopped))
    assert firing[0]["annotations"]["summary"] == f"node target {instance} is down"
    assert firing[0]["labels"]["severity"] == "critical"

    resolved = wait_for(lambda: _alert_posts(sink_posts()[seen:], "resolved", **wanted), 180, 5)
    assert resolved, f"no resolved TargetDown within 3 min: {sink_posts()[seen:]}"
    TIMINGS.append(("node-exporter started -> resolved TargetDown", time.monotonic() - started))


def test_down_api_target_mutes_the_api_alerts(host, amtool, sink_posts):
    seen = len(sink_posts())
    # A new instance each run: Alertmanager's notification log (kept across restarts, unlike the
    # alerts) would rightly not repeat a notification of the same alert within repeat_interval.
    instance = f"ml-api-{time.time_ns()}:8000"
    end = host.check_output("date -u -d '+3 min' +%Y-%m-%dT%H:%M:%SZ")
    add = f"alert add --end={end} --annotation=summary=scenario"
    down = amtool(f"{add} alertname=TargetDown job=ml-api instance={instance} severity=critical")
    assert down.rc == 0, down.stderr
    muted = amtool(f"{add} alertname=ApiHighErrorRate severity=critical")
    assert muted.rc == 0, muted.stderr

    def inhibited() -> list[dict[str, Any]]:
        out = amtool("--output=json alert query --inhibited alertname=ApiHighErrorRate").stdout
        return [a for a in json.loads(out or "[]") if a["status"]["inhibitedBy"]]

    assert wait_for(inhibited, 60), amtool("alert query --inhibited").stdout
    arrived = wait_for(
        lambda: _alert_posts(sink_posts()[seen:], "firing", job="ml-api", instance=instance),
        60,
    )
    assert arrived, sink_posts()[seen:]
    # Its notification went out with the same timing as TargetDown's would have.
    assert not _alert_posts(sink_posts()[seen:], "firing", alertname="ApiHighErrorRate")
