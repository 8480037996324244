"""The alertmanager role again with other variables: a bad one stops it before anything is
written; no receiver at all is said loudly and turns NoAlertReceiver on."""

from __future__ import annotations

import re

import pytest
from alert_notifications import wait_for
from alerting_support import CONFIG, flat

BAD_INHIBIT = [
    {"source_matchers": ['alertname="TargetDown"'], "target_matchers": ['alertname=~"("']}
]


def _started_at(as_service) -> str:
    return as_service("podman inspect --format '{{.State.StartedAt}}' alertmanager").stdout.strip()


@pytest.mark.timeout(900)
def test_amtool_refusal_keeps_the_old_configuration(host, alertmanager_role, as_service):
    before = host.file(CONFIG).sha256sum
    started = _started_at(as_service)
    rc, out = alertmanager_role({"alertmanager_inhibit_rules": BAD_INHIBIT})
    assert rc != 0, out
    assert "failed to validate" in flat(out), out
    assert "alertmanager.yml" in flat(out)
    assert host.file(CONFIG).sha256sum == before
    assert _started_at(as_service) == started


@pytest.mark.timeout(600)
def test_broken_receiver_variable_stops_before_anything_is_written(
    host, alertmanager_role, as_service
):
    before = host.file(CONFIG).sha256sum
    started = _started_at(as_service)
    rc, out = alertmanager_role({"alertmanager_webhook_url": "ntfy.example.org/no-scheme"})
    assert rc != 0, out
    assert "alertmanager_webhook_url must be an http:// or https:// URL" in flat(out), out
    assert "no-scheme" not in out  # the value (it may hold a token) is never printed
    assert "Run Alertmanager" not in out
    assert host.file(CONFIG).sha256sum == before
    assert _started_at(as_service) == started


@pytest.mark.timeout(1200)
def test_no_receiver_is_said_loudly_and_fires_no_alert_receiver(host, alertmanager_role, promql):
    try:
        rc, out = alertmanager_role({"alertmanager_webhook_url": ""})
        assert rc == 0, out
        assert "NO ALERT RECEIVER" in out
        assert "webhook_configs" not in host.file(CONFIG).content_string

        def firing() -> bool:
            alerts = promql('ALERTS{alertname="NoAlertReceiver",alertstate="firing"}')
            return bool(re.search(r"=> 1 @", alerts))

        assert wait_for(firing, 120, 5), promql("alertmanager_integrations")
    finally:
        rc, out = alertmanager_role({})
    assert rc == 0, out
    assert "NO ALERT RECEIVER" not in out

    def quiet() -> bool:
        return not re.search(r"=> 1 @", promql('ALERTS{alertname="NoAlertReceiver"}'))

    assert wait_for(quiet, 120, 5), promql("alertmanager_integrations")
