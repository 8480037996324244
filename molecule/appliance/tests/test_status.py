"""The operator's view: `appliance status` (podman role) on the full appliance. Healthy, it
names every unit, the served model, the certificates, the disk and the backup, and exits 0;
with a unit stopped it exits non-zero and names that unit, and recovers once it runs again."""

from __future__ import annotations

import re
import time

import pytest

SERVICE_USER = "appliance"
MODELS = "/srv/appliance/models/iris"
USER_UNITS = (
    "traefik.service",
    "redis.service",
    "prometheus.service",
    "code-server.service",
    "ml-api.service",
    "edge-api-network.service",
    "edge-ide-network.service",
    "edge-metrics-network.service",
    "api-redis-network.service",
    "scrape-api-network.service",
    "traefik-web.socket",
    "traefik-websecure.socket",
    "appliance-image-refresh.timer",
)
SYSTEM_UNITS = ("ssh.service", "nftables.service", "prometheus-node-exporter.service")


def status(host):
    return host.run("appliance status")


def healthy_status(host, seconds: float = 180):
    """`appliance status` once it exits 0 (health checks of a restarted unit take a while)."""
    deadline = time.monotonic() + seconds
    while True:
        out = status(host)
        if out.rc == 0 or time.monotonic() > deadline:
            return out
        time.sleep(3)


def as_service(host, command: str):
    uid = host.user(SERVICE_USER).uid
    return host.run(
        f"cd / && runuser -u {SERVICE_USER} -- env XDG_RUNTIME_DIR=/run/user/{uid} {command}"
    )


def test_healthy_appliance_exits_0_and_names_everything(host):
    out = healthy_status(host)
    assert out.rc == 0, out.stdout + out.stderr
    uid = host.user(SERVICE_USER).uid
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    for unit in (*USER_UNITS, *SYSTEM_UNITS, f"user@{uid}.service"):
        assert unit in rows, f"{unit} missing:\n{out.stdout}"
    for unit in ("traefik", "redis", "prometheus", "code-server", "ml-api"):
        assert re.search(r"active/running\s+healthy$", rows[f"{unit}.service"]), rows[
            unit + ".service"
        ]
    versions = host.check_output(f"ls {MODELS}").split()
    served = re.search(r"^model: iris (\S+) ", out.stdout, re.M)
    assert served and served.group(1) in versions, out.stdout
    assert re.search(r"^  /etc/appliance/ca\.crt: \d+ days left$", out.stdout, re.M), out.stdout
    assert re.search(r"^  /: \d+% used", out.stdout, re.M), out.stdout
    # Before the first timer run, or after test_backup.py's runs.
    assert re.search(
        r"^backup: (none has run yet|last success [\d.]+ h ago, \d+ snapshot\(s\))",
        out.stdout,
        re.M,
    ), out.stdout
    assert out.stdout.rstrip().endswith("no problems")


def test_runs_as_root_only(host):
    out = host.run("runuser -u nobody -- /usr/local/sbin/appliance status")
    assert out.rc == 2 and "as root" in out.stderr


@pytest.mark.parametrize(
    ("unit", "stop", "start"),
    [
        ("prometheus.service", "systemctl --user stop", "systemctl --user start"),
        ("prometheus-node-exporter.service", "systemctl stop", "systemctl start"),
    ],
    ids=["user-unit", "system-unit"],
)
def test_a_stopped_unit_is_named_and_fails_the_status(host, unit, stop, start):
    def run(command: str):
        return as_service(host, command) if "--user" in command else host.run(command)

    assert run(f"{stop} {unit}").rc == 0
    try:
        out = status(host)
        assert out.rc == 1, out.stdout
        problems = out.stdout.split("problem(s):", 1)[1]
        assert unit in problems, out.stdout
        row = next(line for line in out.stdout.splitlines() if line.startswith(unit + " "))
        assert "inactive" in row and "PROBLEM" in row, row
    finally:
        assert run(f"{start} {unit}").rc == 0
    out = healthy_status(host)
    assert out.rc == 0, out.stdout


def test_printed_systemctl_and_journalctl_forms_work(host):
    out = host.check_output("appliance units")
    forms = {}
    for line in out.splitlines():
        if not line.startswith("#"):
            status_form, journal_form = line.split("    ")
            forms[status_form.split()[-1]] = (status_form, journal_form)
    for unit in (*USER_UNITS, *SYSTEM_UNITS):
        shown = host.run(forms[unit][0] + " --no-pager")
        assert shown.rc == 0 and "Active: active" in shown.stdout, (forms[unit], shown.stdout)
    journal = host.run(forms["ml-api.service"][1] + " -n 20 --no-pager")
    assert journal.rc == 0, journal.stderr
    assert "-- No entries --" not in journal.stdout and "ml-api" in journal.stdout, journal.stdout
