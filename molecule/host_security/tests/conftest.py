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


@pytest.fixture
def fresh_ssh_budget(host):
    """Empty the firewall's per-source SSH meters (burst 20, then 10/minute): a test that opens
    SSH connections from the controller does not depend on how many earlier tests opened."""
    for family in ("v4", "v6"):
        host.check_output(f"sudo nft flush set inet appliance_filter ssh_rate_{family}")


def playbook_command(*args: str) -> list[str]:
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
            playbook_command(*args),
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
# A key of the right form: only the validation runs, so it never reaches a machine.
SOME_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample00 x"
BAD_INPUT = {
    "no operator key": (
        {"hardening_operators": [{"name": "opsadmin", "ssh_keys": []}]},
        "Operator opsadmin: ssh_keys must list at least one SSH public key",
    ),
    "operator not allowed": (
        {"hardening_ssh_allow_users": ["opsadmin", "molecule"]},
        "The operator(s) alice are neither in hardening_ssh_allow_users",
    ),
    "no operator left": (
        {"hardening_operators": [{"name": "opsadmin", "state": "absent"}]},
        "would never lock out the last operator",
    ),
    "removes its own account": (
        {
            "hardening_operators": [
                {"name": "opsadmin", "ssh_keys": [SOME_KEY]},
                {"name": "molecule", "state": "absent"},
            ]
        },
        "This play connects as molecule, which hardening_operators removes",
    ),
    "operator twice": (
        {"hardening_operators": [{"name": "opsadmin", "ssh_keys": [SOME_KEY]}] * 2},
        "must name distinct, valid, non-root accounts",
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
