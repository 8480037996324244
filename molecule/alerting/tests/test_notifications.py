"""Alerts reach the webhook: a stopped target fires TargetDown and its start resolves it; a
down API target mutes the API's own alerts (inhibition)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from alert_notifications import TIMINGS, alert_posts, wait_for

EXPORTER = "prometheus-node-exporter.service"


@pytest.mark.timeout(900)
def test_stopped_target_fires_and_its_start_resolves(host, sink_posts_of):
    instance = host.ansible.get_variables()["inventory_hostname"]
    wanted = {"alertname": "TargetDown", "job": "node", "instance": instance}
    seen = len(sink_posts_of())
    assert host.run(f"systemctl stop {EXPORTER}").rc == 0
    stopped = time.monotonic()
    try:
        # TargetDown waits 5 minutes (for: 5m), then one group_wait, then the post.
        firing = wait_for(lambda: alert_posts(sink_posts_of()[seen:], "firing", **wanted), 480, 5)
    finally:
        assert host.run(f"systemctl start {EXPORTER}").rc == 0
    started = time.monotonic()
    assert firing, f"no firing TargetDown for {instance} within 8 min: {sink_posts_of()[seen:]}"
    TIMINGS.append(("node-exporter stopped -> firing TargetDown at the webhook", started - stopped))
    assert firing[0]["annotations"]["summary"] == f"node target {instance} is down"
    assert firing[0]["labels"]["severity"] == "critical"

    resolved = wait_for(lambda: alert_posts(sink_posts_of()[seen:], "resolved", **wanted), 180, 5)
    assert resolved, f"no resolved TargetDown within 3 min: {sink_posts_of()[seen:]}"
    TIMINGS.append(("node-exporter started -> resolved TargetDown", time.monotonic() - started))


def test_down_api_target_mutes_the_api_alerts(host, amtool, sink_posts_of):
    seen = len(sink_posts_of())
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
        lambda: alert_posts(sink_posts_of()[seen:], "firing", job="ml-api", instance=instance),
        60,
    )
    assert arrived, sink_posts_of()[seen:]
    # Its notification went out with the same timing as TargetDown's would have.
    assert not alert_posts(sink_posts_of()[seen:], "firing", alertname="ApiHighErrorRate")
