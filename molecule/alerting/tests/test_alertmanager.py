"""Alertmanager: amtool-clean configuration without secrets, Prometheus sends to it and scrapes
it, its UI only behind the metrics host's login, no port on the host."""

from __future__ import annotations

import re
import subprocess
import tempfile

import pytest
import yaml
from alert_notifications import wait_for
from alerting_support import CONFIG, CONTAINER_CONFIG

METRICS_PASSWORD_FILE = "/etc/appliance/secrets/traefik-metrics-password"


def test_amtool_accepts_the_running_configuration(as_service):
    result = as_service(f"podman exec alertmanager amtool check-config {CONTAINER_CONFIG}")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert re.search(r"- 3 inhibit rules", result.stdout), result.stdout


def test_configuration_names_no_secret(host):
    config = host.file(CONFIG).content_string
    webhook = host.ansible.get_variables()["alertmanager_webhook_url"]
    assert webhook not in config
    parsed = yaml.safe_load(config)
    hooks = [w for r in parsed["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks and {w["url_file"] for w in hooks} == {"/run/secrets/alertmanager-webhook-url"}


def test_routes_by_severity_reach_the_webhook(host):
    parsed = yaml.safe_load(host.file(CONFIG).content_string)
    routes = {r["matchers"][0]: r["receiver"] for r in parsed["route"]["routes"]}
    assert routes == {
        'severity="critical"': "severity-critical",
        'severity="warning"': "severity-warning",
    }
    assert parsed["route"]["receiver"] == "all"


def test_prometheus_sends_to_and_scrapes_alertmanager(promql):
    def ready() -> bool:
        return bool(
            re.search(r"=> 1 @", promql("prometheus_notifications_alertmanagers_discovered"))
            and re.search(r'up\{.*job="alertmanager".*\} => 1', promql("up"))
        )

    assert wait_for(ready, 90), promql("up")
    # the webhook in each of the receivers all, severity-critical and severity-warning
    assert re.search(r"=> 3 @", promql("alertmanager_integrations"))


def test_alertmanager_publishes_no_host_port(host, as_service):
    bindings = as_service(
        "podman inspect --format '{{json .HostConfig.PortBindings}}' alertmanager"
    )
    assert bindings.stdout.strip() in ("{}", "null")
    listening = host.check_output("ss -Hltn")
    assert ":9093" not in listening and ":9094" not in listening


@pytest.fixture(scope="module")
def through_traefik(host):
    """curl from the controller to the metrics host, trusting the appliance CA."""
    address = host.ansible.get_variables()["ansible_host"]
    ca = tempfile.NamedTemporaryFile("w", suffix=".crt")  # noqa: SIM115 (lives for the module)
    ca.write(host.file("/etc/appliance/ca.crt").content_string)
    ca.flush()

    def status(path: str, *args: str) -> int:
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", ca.name,
             "--resolve", f"metrics.localhost:443:{address}", "-o", "/dev/null",
             "-w", "%{http_code}", *args, f"https://metrics.localhost{path}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return int(result.stdout or 0)

    yield status
    ca.close()


def test_ui_behind_the_metrics_login(host, through_traefik):
    with host.sudo():
        password = host.file(METRICS_PASSWORD_FILE).content_string.strip()
    assert through_traefik("/alertmanager/-/healthy") == 401
    assert through_traefik("/alertmanager/-/healthy", "-u", "ops:wrong") == 401

    def healthy() -> bool:
        return through_traefik("/alertmanager/-/healthy", "-u", f"ops:{password}") == 200

    assert wait_for(healthy, 60)  # Traefik's file provider picks up the route by itself
    assert through_traefik("/alertmanager/api/v2/status", "-u", f"ops:{password}") == 200
    # Prometheus keeps the rest of the host
    assert through_traefik("/-/healthy", "-u", f"ops:{password}") == 200


def test_no_alert_receiver_rule_is_deployed(host):
    # Its promtool unit test runs with all the others in the deployed Prometheus
    # (services/tests/test_prometheus.py); test_role_reruns.py sees it fire.
    rules = yaml.safe_load(host.file("/etc/appliance/prometheus/rules/alerts.yml").content_string)
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert "alertmanager_integrations" in alerts["NoAlertReceiver"]["expr"]
