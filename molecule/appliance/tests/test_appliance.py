"""The whole appliance end to end: every unit up, the API answering through Traefik with the
appliance CA (the data scientist's smoke-test client, run on the host), Prometheus scraping it."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
AS_SERVICE = "cd / && runuser -u appliance -- env XDG_RUNTIME_DIR=/run/user/$(id -u appliance) "


def test_every_unit_active(host):
    for unit in ("traefik", "redis", "prometheus", "code-server", "ml-api"):
        state = host.run(AS_SERVICE + f"systemctl --user is-active {unit}.service")
        assert state.stdout.strip() == "active", unit


def test_smoke_test_client_through_traefik(host):
    client = (REPO / "workspace" / "test_client.py").read_text()
    out = host.run(
        "python3 - --base-url https://api.localhost --connect-to 127.0.0.1:443 "
        "--ca-file /etc/appliance/ca.crt --username admin "
        f"--password-file /etc/appliance/secrets/ml-api-users/admin <<'EOF'\n{client}\nEOF"
    )
    assert out.rc == 0, out.stdout + out.stderr


def test_api_refuses_anonymous_prediction_through_traefik(host):
    out = host.run(
        "curl -s -o /dev/null -w '%{http_code}' --cacert /etc/appliance/ca.crt "
        "--resolve api.localhost:443:127.0.0.1 -H 'Content-Type: application/json' "
        + shlex.quote('-d{"features": [5.1, 3.5, 1.4, 0.2]}')
        + " https://api.localhost/predict"
    )
    assert out.stdout == "401", out.stdout + out.stderr


def test_prometheus_scrapes_every_target(host):
    expected = {"prometheus", "node", "traefik", "ml-api"}
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
