"""Fixtures of the alerting tests: the service account, amtool, Prometheus queries, the webhook
sink's record, and re-runs of the alertmanager role with other variables."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

import pytest
from alert_notifications import report_timings, sink_posts
from alerting_support import AM_URL, run_alertmanager_role
from service_account import SERVICE_USER, service_command


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


@pytest.fixture(scope="module")
def sink_posts_of(host) -> Callable[[], list[dict[str, Any]]]:
    """Every body the webhook sink has received so far."""
    return lambda: sink_posts(host)


@pytest.fixture(scope="module")
def alertmanager_role(request) -> Callable[[dict[str, Any]], tuple[int, str]]:
    """The alertmanager role alone with extra variables, on the inventory the tests run against
    (molecule's, or the one `make check-up` names)."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE") or request.config.getoption(
        "ansible_inventory"
    )
    assert inventory, "no inventory: run under molecule or with --ansible-inventory"
    return lambda extra_vars: run_alertmanager_role(inventory, extra_vars)


def pytest_terminal_summary(terminalreporter) -> None:
    report_timings(terminalreporter)
