"""Helpers of the alerting scenario: the service account, amtool, the webhook sink's record,
and re-runs of the alertmanager role with other variables."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from service_account import SERVICE_USER, service_command

AM_URL = "http://localhost:9093/alertmanager"
SINK_LOG = "/var/lib/webhook-sink/posts.jsonl"
CONFIG = "/etc/appliance/alertmanager/alertmanager.yml"
# The same file inside the container.
CONTAINER_CONFIG = "/etc/alertmanager/alertmanager.yml"


@pytest.fixture(scope="module")
def as_service(host) -> Callable[..., Any]:
    """Run a shell command as the service account, with its user manager's environment."""
    uid = int(host.check_output(f"id -u {SERVICE_USER}"))

    def run(command: str, stdin: str | None = None):
        return host.run(service_command(uid, command, stdin))

    return run


@pytest.fixture(scope="module")
def amtool(as_service) -> Callable[..., Any]:
    """amtool inside the running container, against its own API."""

    def run(args: str):
        return as_service(f"podman exec alertmanager amtool --alertmanager.url={AM_URL} {args}")

    return run


@pytest.fixture(scope="module")
def promql(as_service) -> Callable[[str], str]:
    """An instant query in the running Prometheus (promtool's text output)."""

    def query(expr: str) -> str:
        promtool = "podman exec prometheus promtool query instant http://localhost:9090"
        result = as_service(f"{promtool} {shlex.quote(expr)}")
        assert result.rc == 0, result.stderr
        return result.stdout

    return query


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 3) -> Any:
    """Poll ``check`` until it returns something truthy; its last result on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


@pytest.fixture(scope="module")
def sink_posts(host) -> Callable[[], list[dict[str, Any]]]:
    """Every body the webhook sink has received so far."""

    def read() -> list[dict[str, Any]]:
        out = host.run(f"cat {SINK_LOG} 2>/dev/null").stdout
        return [json.loads(line)["body"] for line in out.splitlines() if line.strip()]

    return read


ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook") or str(
    Path(sys.executable).parent / "ansible-playbook"
)


def run_alertmanager_role(extra_vars: dict[str, Any]) -> tuple[int, str]:
    """alertmanager_only.yml with ``extra_vars`` on top of the scenario's inventory."""
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    proc = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         str(scenario / "alertmanager_only.yml"), "-e", json.dumps(extra_vars)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def flat(text: str) -> str:
    """Output with all whitespace runs collapsed (the yaml callback wraps long lines)."""
    return " ".join(text.split())


# Measured delays (name, seconds), printed at the end of the run.
TIMINGS: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for name, seconds in TIMINGS:
        terminalreporter.write_line(f"alerting timing: {name}: {seconds:.0f} s")
