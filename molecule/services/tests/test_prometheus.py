"""Prometheus: targets up, promtool-clean config and alert rules, node-exporter kept local."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
EXPECTED_JOBS = {"prometheus", "node", "traefik"}


def _up_series(as_service) -> dict[str, str]:
    result = as_service("podman exec prometheus promtool query instant http://localhost:9090 up")
    assert result.rc == 0, result.stderr
    series = {}
    for line in result.stdout.splitlines():
        match = re.match(r'up\{.*job="([^"]+)".*\} => (\d)', line)
        if match:
            series[match.group(1)] = match.group(2)
    return series


def test_all_targets_up(as_service):
    deadline = time.monotonic() + 90  # first scrapes after a restart take one interval
    series = _up_series(as_service)
    while (
        set(series) != EXPECTED_JOBS or set(series.values()) != {"1"}
    ) and time.monotonic() < deadline:
        time.sleep(5)
        series = _up_series(as_service)
    assert set(series) == EXPECTED_JOBS
    assert series == {job: "1" for job in EXPECTED_JOBS}, series


def test_promtool_accepts_the_running_configuration(as_service):
    config = as_service(
        "podman exec prometheus promtool check config /etc/prometheus/prometheus.yml"
    )
    assert config.rc == 0, config.stdout + config.stderr
    rules = as_service(
        "podman exec prometheus promtool check rules /etc/prometheus/rules/alerts.yml"
    )
    assert rules.rc == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


def test_alert_rule_unit_tests_pass_in_the_deployed_prometheus(as_service):
    tests = yaml.safe_load((REPO / "files/prometheus/alerts_test.yml").read_text(encoding="utf-8"))
    tests["rule_files"] = ["/etc/prometheus/rules/alerts.yml"]
    result = as_service(
        "podman exec -i prometheus sh -c "
        "'cat > /tmp/alerts_test.yml && promtool test rules /tmp/alerts_test.yml'",
        stdin=yaml.safe_dump(tests),
    )
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_all_alerts_required_by_the_design_exist(host):
    rules = yaml.safe_load(host.file("/etc/appliance/prometheus/rules/alerts.yml").content_string)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "TargetDown",
        "ApiHighErrorRate",
        "ApiHighLatencyP99",
        "ApiAuthFailureSpike",
        "ModelIntegrityFailure",
        "ModelFeatureDrift",
        "BackupStale",
        "DiskAlmostFull",
    } <= alerts


def test_retention_by_time_and_size(podman_inspect):
    args = podman_inspect("prometheus", "{{json .Args}}")
    assert "--storage.tsdb.retention.time=15d" in args
    assert "--storage.tsdb.retention.size=1GB" in args


def test_prometheus_publishes_no_host_port(host, podman_inspect):
    assert podman_inspect("prometheus", "{{json .HostConfig.PortBindings}}") in ("{}", "null")
    assert ":9090" not in host.check_output("ss -Hltn")


def test_node_exporter_listens_on_one_host_address_only(host):
    assert host.service("prometheus-node-exporter").is_running
    listeners = [
        line.split()[3]
        for line in host.check_output("ss -Hltn").splitlines()
        if line.split()[3].endswith(":9100")
    ]
    address = host.ansible.get_variables()["ansible_host"]
    assert listeners == [f"{address}:9100"], listeners
