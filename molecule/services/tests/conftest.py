"""Shared fixtures of the services scenario: the service account, the address, the CA file."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from service_account import SERVICE_USER, service_command

# The appliance CA, world-readable for clients.
CA_PUBLIC = "/etc/appliance/ca.crt"


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


@pytest.fixture(scope="module")
def address(host) -> str:
    """The machine's address, as the controller reaches it."""
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def ca_file(host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A controller-side copy of the appliance CA certificate, for TLS clients."""
    path = tmp_path_factory.mktemp("ca") / "appliance-ca.crt"
    path.write_text(host.file(CA_PUBLIC).content_string, encoding="ascii")
    return path
