"""Helpers for the services scenario: run commands as the rootless service account."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import pytest
from service_account import SERVICE_USER, service_command


@pytest.fixture(scope="module")
def service_uid(host) -> int:
    return int(host.check_output(f"id -u {SERVICE_USER}"))


@pytest.fixture(scope="module")
def as_service(host, service_uid: int) -> Callable[..., Any]:
    """Run a shell command as the service account, with its user manager's environment."""

    def run(command: str, stdin: str | None = None):
        return host.run(service_command(service_uid, command, stdin))

    return run


@pytest.fixture(scope="module")
def podman_inspect(as_service) -> Callable[[str, str], str]:
    """`podman inspect --format FORMAT NAME`, checked."""

    def inspect(name: str, fmt: str) -> str:
        result = as_service(f"podman inspect --format {shlex.quote(fmt)} {shlex.quote(name)}")
        assert result.rc == 0, result.stderr
        return result.stdout.strip()

    return inspect
