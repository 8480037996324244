"""The ops page (files/prometheus/consoles/ops.html) rendered by a throw-away Prometheus on the
controller (Debian's prometheus, 127.0.0.1, a temporary data directory), the way the prometheus
role runs it: --web.console.templates and --web.console.libraries on the consoles directory.

Twice: once with nothing but Prometheus itself scraped (every panel says "no data", never a
template error), once with a fake exporter serving the appliance's metric names (the numbers and
the tables show up, and the graphs' range queries return data). The browser side (the SVG the
page's script draws) is molecule/appliance/tests/test_browser.py's.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from local_playbook import role_playbook, run_local_playbook
from ops_page import PANELS

REPO = Path(__file__).resolve().parents[2]
CONSOLES = REPO / "files" / "prometheus" / "consoles"
# Debian's prometheus, from .ci/apt-packages.txt: missing, the tests fail rather than skip.
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# What a broken query or template would leave in the page.
FAILURES = ("error executing", "template:", "NaN", "<no value>")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Exporter(BaseHTTPRequestHandler):
    """The appliance's metric names with values that grow with every scrape."""

    scrapes = 0

    def do_GET(self) -> None:
        type(self).scrapes += 1
        n = type(self).scrapes
        now = time.time()
        cert, ca = now + 30 * 86400, now + 3650 * 86400
        lines = [
            f'ml_api_requests_total{{route="/predict",method="POST",status="200"}} {100 * n}',
            f'ml_api_requests_total{{route="/predict",method="POST",status="500"}} {n}',
            f'ml_api_rate_limited_total{{endpoint_class="predict"}} {3 * n}',
            f'ml_api_auth_failures_total{{reason="bad_password"}} {2 * n}',
            f'ml_api_predictions_total{{class_name="setosa",model_version="1"}} {60 * n}',
            f'ml_api_predictions_total{{class_name="virginica",model_version="1"}} {40 * n}',
            'ml_model_feature_drift_psi{feature="petal_length"} 0.31',
            'ml_model_feature_drift_psi{feature="sepal_width"} 0.02',
            "ml_model_rolling_accuracy 0.93",
            f"appliance_backup_last_success_timestamp_seconds {now - 7200:.0f}",
            f'traefik_tls_certs_not_after{{cn="api.localhost",sans="api.localhost"}} {cert:.0f}',
            f'traefik_tls_certs_not_after{{cn="TRAEFIK DEFAULT CERT",sans=""}} {now + 86400:.0f}',
            f'appliance_certificate_not_after_timestamp_seconds{{certificate="ca"}} {ca:.0f}',
        ]
        for le, share in (("0.005", 0.5), ("0.01", 0.9), ("0.1", 0.99), ("+Inf", 1.0)):
            bucket = f'ml_api_request_duration_seconds_bucket{{route="/predict",le="{le}"}}'
            lines.append(f"{bucket} {101 * n * share:.0f}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (http://127.0.0.1 only)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _prometheus(tmp: Path, targets: list[str]) -> Iterator[str]:
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        + "".join(
            f"  - job_name: ml-api\n    static_configs: [{{targets: ['{t}']}}]\n" for t in targets
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.console.templates={CONSOLES}",
            f"--web.console.libraries={CONSOLES}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(base + "/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, "prometheus not ready within 30 s"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _prometheus(tmp_path_factory.mktemp("prom-bare"), [])


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        base_iter = _prometheus(tmp_path_factory.mktemp("prom-fed"), [target])
        base = next(base_iter)
        # rate() needs two samples of a series within its window
        deadline = time.monotonic() + 30
        while _Exporter.scrapes < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)
        yield base
        base_iter.close()
    finally:
        server.shutdown()


def _panel(page: str, panel_id: str) -> str:
    match = re.search(rf'<div class="panel" id="{panel_id}">(.*?)</div>\n', page, re.S)
    assert match, f"panel {panel_id} missing"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def test_without_the_appliance_metrics_every_panel_says_no_data(bare):
    status, page = _get(bare + "/consoles/ops.html")
    assert status == 200, page
    for title in PANELS:
        assert f"<h2>{html.escape(title)}</h2>" in page, title
    assert not [m for m in FAILURES if m in page]
    for panel_id in ("request-rate", "error-rate", "latency", "accuracy", "backup-age"):
        assert "no data" in _panel(page, panel_id), panel_id
    # Counters the API exports only once they count: no API scraped, no zero either.
    assert "no data" in _panel(page, "rate-limited")
    assert "no data" in _panel(page, "cert-days")


def test_with_the_appliance_metrics_the_panels_show_numbers(fed):
    status, page = _get(fed + "/consoles/ops.html")
    assert status == 200, page
    assert not [m for m in FAILURES if m in page]
    assert "no data" not in page.split("<script>")[0]
    assert re.search(r"\d+\.\d\d req/s", _panel(page, "request-rate"))
    assert re.search(r"\d", _panel(page, "error-rate"))
    assert re.search(r"\d+ms", _panel(page, "latency"))
    assert "93%" in _panel(page, "accuracy")
    assert "2h" in _panel(page, "backup-age")
    days = _panel(page, "cert-days")
    # Traefik's own fallback certificate (1 day) is not the appliance's
    assert re.search(r"(29\.9|30\.0) days", days), days
    assert "CA: 36" in days, days
    predictions = _panel(page, "predictions")
    assert predictions.index("setosa") < predictions.index("virginica"), predictions
    drift = _panel(page, "drift")
    assert "petal_length" in drift and "0.310" in drift and "sepal_width" in drift, drift
    assert 'class="num bad">0.310' in page


def test_the_graph_queries_return_data(fed):
    page = _get(fed + "/consoles/ops.html")[1]
    queries = [html.unescape(q) for q in re.findall(r'data-query="([^"]+)"', page)]
    assert len(queries) == 5
    end = time.time()
    for query in queries:
        args = urllib.parse.urlencode({"query": query, "start": end - 3600, "end": end, "step": 60})
        status, body = _get(f"{fed}/api/v1/query_range?{args}")
        assert status == 200, (query, body)
        assert '"resultType":"matrix","result":[{' in body, (query, body)


# The play after its header (local_playbook.role_playbook): the unit, the files the spec installs.
PLAYBOOK = """
  tasks:
    - name: Render the unit
      ansible.builtin.template:
        src: {role}/templates/prometheus.container.j2
        dest: "{{{{ out }}}}/prometheus.container"
        mode: "0644"
    - name: Write the files the service spec installs
      ansible.builtin.copy:
        content: "{{{{ __prometheus_service.configs | map(attribute='dest') | to_json }}}}"
        dest: "{{{{ out }}}}/spec.json"
        mode: "0644"
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_the_role_installs_the_page_and_points_prometheus_at_it(tmp_path: Path, enabled: bool):
    role = REPO / "roles" / "prometheus"
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        role_playbook(role, "Render the prometheus unit", PLAYBOOK.format(role=role)),
        encoding="utf-8",
    )
    result = run_local_playbook(
        playbook,
        {
            "out": str(tmp_path),
            "prometheus_consoles_enabled": enabled,
            # role_path exists only inside the role
            "prometheus_alert_rules_file": str(REPO / "files/prometheus/alerts.yml"),
            "prometheus_console_file": str(CONSOLES / "ops.html"),
            "podman_service_image": "localhost/appliance/prometheus:local",
            "podman_service_uid": 998,
            "podman_xdg_runtime_dir": "/run/user/1000",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unit = (tmp_path / "prometheus.container").read_text(encoding="utf-8")
    spec = json.loads((tmp_path / "spec.json").read_text(encoding="utf-8"))
    flags = ["--web.console.templates=/etc/prometheus/consoles", "--web.console.libraries="]
    page = "/etc/appliance/prometheus/consoles/ops.html"
    # The config directory is the container's /etc/prometheus (read-only).
    assert "Volume=/etc/appliance/prometheus:/etc/prometheus:ro" in unit
    if enabled:
        assert all(f in unit for f in flags), unit
        assert page in spec, spec
    else:
        assert not any(f in unit for f in flags), unit
        assert page not in spec, spec
    assert "/etc/appliance/prometheus/rules/alerts.yml" in spec, spec
