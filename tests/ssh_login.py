"""A fresh SSH login from the controller to a test machine, with no connection sharing: what
an operator's own ssh does, independent of the connection testinfra or Ansible reuse."""

from __future__ import annotations

import subprocess


def ssh_argv(address: str, user: str, key: str, *options: str) -> list[str]:
    return [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "ControlPath=none",
        "-o", "ConnectTimeout=10",
        *options,
        "-i", key,
        f"{user}@{address}",
    ]  # fmt: skip


def ssh(
    address: str, user: str, key: str, command: str, *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ssh_argv(address, user, key, *options), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
