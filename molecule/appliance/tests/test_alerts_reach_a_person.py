"""An operator stops the API's unit and a person is told: TargetDown reaches the webhook (the
test machine's sink, molecule/shared/prepare.yml), naming the alert and the instance; starting
the unit sends the resolved notification. The rule's own `for: 5m` is kept: the measured delay is
the one a real install has, plus the local inventory's short group_wait."""

from __future__ import annotations

import re
import time

import pytest
from alert_notifications import TIMINGS, alert_posts, sink_posts, wait_for
from on_host import AS_SERVICE, api_status_on_host

PROMQL = AS_SERVICE + "podman exec prometheus promtool query instant http://localhost:9090 "


def _api_instance(host) -> str:
    """The instance label Prometheus gives the API's target, once it is scraped as up."""
    out = wait_for(lambda: host.run(PROMQL + "'up{job=\"ml-api\"} == 1'").stdout, 120)
    found = re.search(r'instance="([^"]+)"', out)
    assert found, f"Prometheus does not scrape the ml-api job as up: {out!r}"
    return found.group(1)


@pytest.mark.timeout(1200)
def test_stopped_api_fires_at_the_webhook_and_its_start_resolves(host):
    instance = _api_instance(host)
    wanted = {"alertname": "TargetDown", "job": "ml-api", "instance": instance}
    seen = len(sink_posts(host))

    def posted(status: str) -> list:
        return alert_posts(sink_posts(host)[seen:], status, **wanted)

    assert host.run(AS_SERVICE + "systemctl --user stop ml-api.service").rc == 0
    stopped = time.monotonic()
    try:
        # for: 5m, then at most one scrape and one evaluation interval, then group_wait.
        firing = wait_for(lambda: posted("firing"), 480, 5)
        fired = time.monotonic()
    finally:
        # From the start command, not its return: it returns once the container is healthy,
        # and the resolved notification may already be out by then.
        started = time.monotonic()
        assert host.run(AS_SERVICE + "systemctl --user start ml-api.service").rc == 0
    assert firing, f"no firing TargetDown for {instance} within 8 min: {sink_posts(host)[seen:]}"
    TIMINGS.append(("ml-api.service stopped -> firing TargetDown at the webhook", fired - stopped))
    assert firing[0]["annotations"]["summary"] == f"ml-api target {instance} is down"
    assert firing[0]["labels"]["severity"] == "critical"
    assert firing[0]["annotations"]["runbook"], firing[0]

    resolved = wait_for(lambda: posted("resolved"), 180, 5)
    assert resolved, f"no resolved TargetDown within 3 min: {sink_posts(host)[seen:]}"
    TIMINGS.append(("ml-api.service start -> resolved TargetDown", time.monotonic() - started))

    # The tests after this one find the API as they expect it: up behind Traefik.
    def ready() -> bool:
        return api_status_on_host(host, "GET", "/v2/health/ready").stdout == "200"

    assert wait_for(ready, 120), api_status_on_host(host, "GET", "/v2/health/ready").stdout
