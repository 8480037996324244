"""The whole appliance end to end: every unit up, the API answering through Traefik with the
appliance CA (the data scientist's smoke-test client, run on the host), Prometheus scraping it."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from on_host import AS_SERVICE, api_status_on_host

REPO = Path(__file__).resolve().parents[3]


def test_every_unit_active(host):
    for unit in ("traefik", "redis", "prometheus", "code-server", "ml-api"):
        state = host.run(AS_SERVICE + f"systemctl --user is-active {unit}.service")
        assert state.stdout.strip() == "active", unit


def test_smoke_client_through_traefik(host):
    client = (REPO / "workspace" / "smoke_client.py").read_text()
    out = host.run(
        "python3 - --base-url https://api.localhost --connect-to 127.0.0.1:443 "
        "--ca-file /etc/appliance/ca.crt --username admin "
        f"--password-file /etc/appliance/secrets/ml-api-users/admin <<'EOF'\n{client}\nEOF"
    )
    assert out.rc == 0, out.stdout + out.stderr


def test_api_refuses_anonymous_prediction_through_traefik(host):
    out = api_status_on_host(host, "POST", "/predict", '{"features": [5.1, 3.5, 1.4, 0.2]}')
    assert out.rc == 0, out.stderr
    assert out.stdout == "401", out.stdout


def test_prometheus_scrapes_every_target(host):
    expected = {"prometheus", "node", "traefik", "ml-api", "alertmanager"}
    deadline = time.monotonic() + 120
    while True:
        out = host.run(
            AS_SERVICE + "podman exec prometheus promtool query instant http://localhost:9090 up"
        )
        up = dict(re.findall(r'up\{.*job="([^"]+)".*\} => (\d)', out.stdout))
        if up == dict.fromkeys(expected, "1") or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert up == dict.fromkeys(expected, "1"), out.stdout + out.stderr


def _api_status(host, path: str = "/v2/health/ready", *args: str) -> int:
    """HTTP status of an API path through Traefik, from the controller (curl, appliance CA)."""
    address = host.ansible.get_variables()["ansible_host"]
    with tempfile.NamedTemporaryFile("w", suffix=".crt") as ca:
        ca.write(host.file("/etc/appliance/ca.crt").content_string)
        ca.flush()
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", ca.name,
             "--resolve", f"api.localhost:443:{address}", "-o", "/dev/null", "-w", "%{http_code}",
             *args, f"https://api.localhost{path}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _poll_status(host, wanted: int, seconds: float) -> list[int]:
    seen = []
    deadline = time.monotonic() + seconds
    while not seen or (seen[-1] != wanted and time.monotonic() < deadline):
        seen.append(_api_status(host))
        if seen[-1] != wanted:
            time.sleep(1)
    return seen


def test_api_answers_503_while_it_is_stopped(host):
    """Traefik's health check marks a stopped API down: 503, not a hanging request; then back."""
    assert _poll_status(host, 200, 60)[-1] == 200
    assert host.run(AS_SERVICE + "systemctl --user stop ml-api.service").rc == 0
    try:
        seen = _poll_status(host, 503, 60)
        assert seen[-1] == 503, seen
    finally:
        assert host.run(AS_SERVICE + "systemctl --user start ml-api.service").rc == 0
    seen = _poll_status(host, 200, 180)
    assert seen[-1] == 200, seen


def test_access_log_records_the_api_status(host):
    """One JSON line per request in Traefik's access log, with the API's answer, no credentials."""
    status = _api_status(host, "/access-log-probe", "-H", "Authorization: Bearer probe-token")
    log = "/var/log/appliance/traefik/access.log"
    assert host.file(log).user == "appliance-traefik"  # its own host account
    records = [json.loads(line) for line in host.check_output(f"tail -n 20 {log}").splitlines()]
    probe = [r for r in records if r.get("RequestPath") == "/access-log-probe"]
    assert probe, "the probe request is missing from the access log"
    assert probe[-1]["RequestHost"] == "api.localhost"
    assert probe[-1]["DownstreamStatus"] == status == 404
    assert "probe-token" not in json.dumps(probe[-1]), "request credentials leaked into the log"
