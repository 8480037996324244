"""Shared helpers for the host-security scenario: controller-side SSH and the machine's address."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ADMIN_USER = "opsadmin"


@pytest.fixture(scope="module")
def hostvars(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def address(hostvars):
    return hostvars["ansible_host"]


@pytest.fixture(scope="module")
def ephemeral_dir():
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


@pytest.fixture(scope="module")
def admin_key(ephemeral_dir):
    key = ephemeral_dir / "opsadmin_ed25519"
    assert key.exists(), f"converge.yml should have made {key}"
    return str(key)


def ssh(address: str, user: str, key: str, command: str, *options: str):
    """A fresh SSH login from the controller (no connection sharing)."""
    return subprocess.run(
        [
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
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def _playbook_command(*args: str) -> list[str]:
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    return [
        "ansible-playbook",
        "-i", os.environ["MOLECULE_INVENTORY_FILE"],
        str(scenario / "converge.yml"),
        *args,
    ]  # fmt: skip


PLAYBOOK_ENV = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def run_playbooks_in_parallel(runs: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Several runs at once (they mostly wait on SSH): name -> (return code, output)."""
    procs = {
        name: subprocess.Popen(
            _playbook_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=PLAYBOOK_ENV,
        )
        for name, args in runs.items()
    }
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        results[name] = (proc.returncode, out)
    return results


# Bad input: each must stop the play with its reason before anything changes.
# Only the validation tasks (tagged always) run with an unused tag.
BAD_INPUT = {
    "no admin key": ({"hardening_admin_ssh_keys": []}, "must list at least one SSH public key"),
    "admin not allowed": (
        {"hardening_ssh_allow_users": ["molecule"]},
        "would lock the operator out",
    ),
    "bad ssh port": ({"hardening_ssh_port": 70000}, "hardening_ssh_port must be 1-65535"),
    "bad extra port": ({"firewall_extra_ports": [{"port": 0}]}, "Port numbers must be 1-65535"),
    "bad reboot time": ({"updates_reboot_time": "25:00"}, "updates_reboot_time HH:MM"),
    "userns off": (
        {"hardening_sysctl_kernel": {"user.max_user_namespaces": 0}},
        "must not disable user namespaces",
    ),
}
CONTAINER_SKIPS = "container skips"


@pytest.fixture(scope="session")
def playbook_runs():
    """All extra ansible-playbook runs of the suite, started together to save time."""
    runs = {
        name: ["--tags", "validation_only", "-e", json.dumps(extra_vars)]
        for name, (extra_vars, _) in BAD_INPUT.items()
    }
    runs[CONTAINER_SKIPS] = ["--tags", "hardening_sysctl,hardening_coredump,hardening_apparmor"]
    return run_playbooks_in_parallel(runs)


def flat(text: str) -> str:
    """Output with all whitespace runs collapsed (the yaml callback wraps long lines)."""
    return " ".join(text.split())
