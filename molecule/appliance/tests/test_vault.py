"""The site run with an Ansible Vault (converge.yml makes a throw-away one): the host uses the
vault's values, and they are nowhere on it but their root-only files: not in the journal, where
modules log their arguments unless a task says no_log, nor in any other file an attacker on the
host could read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

SECRETS = "/etc/appliance/secrets"
WHERE = {
    "vault_backup_password": "restic-password",
    "vault_code_server_password": "code-server-password",
    "vault_traefik_metrics_password": "traefik-metrics-password",
}
PASSWORD_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "vault-password.sh"
# Not searched: /var/lib and /run/user, where the service account's Podman keeps its secrets
# and mounts them into the containers that need them (by design), and the image layers.
SEARCHED = "/etc /var/log /var/backups /srv /home /root /tmp"


@pytest.fixture(scope="module")
def vault() -> dict[str, str]:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip(
            "only the Molecule run has a vault; `make up` generates the secrets on the host"
        )
    viewed = subprocess.run(
        ["ansible-vault", "view", str(Path(ephemeral) / "vault.yml")],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": str(PASSWORD_SCRIPT)},
        timeout=60,
        check=False,
    )
    assert viewed.returncode == 0, viewed.stderr
    values = yaml.safe_load(viewed.stdout)
    assert set(values) == set(WHERE) and all(len(v) >= 24 for v in values.values()), values.keys()
    return values


def test_the_host_uses_the_vaults_values(host, vault):
    for name, file in WHERE.items():
        on_host = host.check_output(f"sudo cat {SECRETS}/{file}")
        assert on_host == vault[name], f"{SECRETS}/{file} is not the vault's {name}"


def test_the_vaults_values_are_in_no_log_and_no_other_file(host, vault):
    # Never a value on a command line here: sudo writes each command line to the journal.
    # (That is how the restic password once leaked: Ansible's `environment:` is a command line.)
    journal = host.check_output("sudo journalctl --no-pager -o cat")
    leaked = [name for name, value in vault.items() if value in journal]
    assert leaked == [], f"in the journal: {leaked} (a task without no_log, or `environment:`?)"
    # The files: searched for the first 16 of each value's 24 or more random characters; not
    # the journal's files (checked above), which hold this very command line.
    patterns = " ".join(f"-e {v[:16]}" for v in vault.values())
    found = host.run(f"sudo grep -rlF --exclude-dir=journal {patterns} {SEARCHED} 2>/dev/null")
    expected = {f"{SECRETS}/{file}" for file in WHERE.values()}
    assert set(found.stdout.split()) == expected, found.stdout
