"""inventories/production's Ansible Vault: the example holds no value, and an operator's own
vault (made as docs/operations.md says) is what the roles' variables read; a wrong password stops
the run before anything is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "production"
VAULT = INVENTORY / "group_vars" / "appliance" / "vault.yml"
EXAMPLE_PASSWORD = "example-vault-password"  # written in the example vault's own header
# What secrets.yml and alerting.yml read from the vault -> the variable the roles take.
READS = {
    "vault_backup_password": "backup_password",
    "vault_code_server_password": "code_server_password",
    "vault_traefik_metrics_password": "traefik_metrics_password",
    "vault_alertmanager_webhook_url": "alertmanager_webhook_url",
}
HOST = "appliance.example.org"


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def _run(*argv: str, password: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"}
    return subprocess.run(
        [_tool(argv[0]), *argv[1:], "--vault-password-file", str(password)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _variable(inventory: Path, name: str, password: Path) -> subprocess.CompletedProcess[str]:
    # debug runs on the controller: nothing connects to the example host.
    return _run(
        "ansible", HOST, "-i", str(inventory), "-m", "ansible.builtin.debug", "-a", f"var={name}",
        password=password,
    )  # fmt: skip


def test_the_example_vault_is_encrypted_and_holds_no_value(tmp_path: Path) -> None:
    assert VAULT.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    password = tmp_path / "pw"
    password.write_text(EXAMPLE_PASSWORD + "\n")
    viewed = _run("ansible-vault", "view", str(VAULT), password=password)
    assert viewed.returncode == 0, viewed.stderr
    assert EXAMPLE_PASSWORD in viewed.stdout  # the header says how to open it
    values = yaml.safe_load(viewed.stdout)
    assert set(READS) <= set(values), values
    assert all(v == "" for v in values.values()), "the example vault must not carry a value"


def test_an_operators_vault_is_what_the_roles_read(tmp_path: Path) -> None:
    inventory = tmp_path / "production"
    shutil.copytree(INVENTORY, inventory)
    password = tmp_path / "pw"
    password.write_text("a-password-only-this-test-knows\n")
    values = {name: f"value-of-{name}-0123456789" for name in READS}
    plain = tmp_path / "vault-plain.yml"
    plain.write_text(yaml.safe_dump(values))
    vault = inventory / "group_vars" / "appliance" / "vault.yml"
    made = _run("ansible-vault", "encrypt", "--output", str(vault), str(plain), password=password)
    assert made.returncode == 0, made.stderr
    assert not any(v in vault.read_text() for v in values.values())
    for vault_name, role_variable in READS.items():
        shown = _variable(inventory, role_variable, password)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert values[vault_name] in shown.stdout, (role_variable, shown.stdout)


def test_a_wrong_vault_password_stops_the_run(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("not-the-password\n")
    shown = _variable(INVENTORY, "backup_password", password)
    assert shown.returncode != 0
    assert "Decryption failed" in shown.stdout + shown.stderr, shown.stdout + shown.stderr
