"""sshd after the hardening role: effective settings, ssh-audit, and who can log in."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADMIN_USER
from ssh_login import ssh

EXPECTED = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "pubkeyauthentication": "yes",
    "authenticationmethods": "publickey",
    "permitemptypasswords": "no",
    "x11forwarding": "no",
    "allowagentforwarding": "no",
    "allowstreamlocalforwarding": "no",
    "permittunnel": "no",
    "gatewayports": "no",
    "maxauthtries": "3",
    "logingracetime": "30",
    "clientaliveinterval": "300",
    "clientalivecountmax": "2",
    "requiredrsasize": "3072",
    # The scenario opens a local tunnel to code-server's port only.
    "allowtcpforwarding": "local",
    "permitopen": "127.0.0.1:8443",
    "allowusers": "opsadmin alice molecule",
    "kexalgorithms": (
        "mlkem768x25519-sha256,sntrup761x25519-sha512,sntrup761x25519-sha512@openssh.com"
    ),
    "ciphers": (
        "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,"
        "aes256-ctr,aes192-ctr,aes128-ctr"
    ),
    "hostkeyalgorithms": (
        "ssh-ed25519,ssh-ed25519-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-512-cert-v01@openssh.com,"
        "rsa-sha2-256,rsa-sha2-256-cert-v01@openssh.com"
    ),
    "macs": "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com",
}


@pytest.fixture(scope="module")
def sshd_effective(host):
    """`sshd -T` prints one line per value; repeated keywords (allowusers, hostkey) are joined."""
    values: dict[str, list[str]] = {}
    for line in host.check_output("sudo /usr/sbin/sshd -T").splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)
    return {key: " ".join(value) for key, value in values.items()}


@pytest.mark.parametrize(("key", "value"), EXPECTED.items())
def test_sshd_effective_value(sshd_effective, key, value):
    assert sshd_effective.get(key) == value


def test_controller_is_exempt_from_sshd_penalties(sshd_effective, address):
    controller = address.rsplit(".", 1)[0] + ".1"
    assert sshd_effective["persourcepenaltyexemptlist"] == controller
    assert sshd_effective["persourcepenalties"] != "no"


def test_sshd_offers_no_ecdsa_host_key(sshd_effective):
    host_keys = sorted(sshd_effective["hostkey"].split())
    assert host_keys == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]


def test_rsa_host_key_is_large_enough(host):
    bits = int(host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key.pub").split()[0])
    assert bits >= 3072


def test_moduli_has_no_small_groups(host):
    small = host.check_output("awk '$1 !~ /^#/ && $5 < 3071' /etc/ssh/moduli")
    assert small == ""


def test_ssh_audit_reports_no_failure_and_no_warning(address):
    # The venv's ssh-audit (PyPI): Debian 12's 2.5.0 predates OpenSSH 10's key exchanges.
    venv_ssh_audit = Path(sys.executable).with_name("ssh-audit")
    ssh_audit = str(venv_ssh_audit) if venv_ssh_audit.exists() else shutil.which("ssh-audit")
    assert ssh_audit, "ssh-audit is not installed (pip install -r requirements/dev.lock)"
    command = [ssh_audit, "-j", "-t", "10", address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    problems = []
    for section in ("kex", "key", "enc", "mac"):
        for alg in report.get(section, []):
            notes = alg.get("notes", {})
            if notes.get("fail") or notes.get("warn"):
                problems.append((section, alg["algorithm"], notes.get("fail"), notes.get("warn")))
    cves = report.get("cves", [])
    recommendations = report.get("recommendations", {})
    assert problems == [], problems
    assert cves == [], cves
    assert "critical" not in recommendations and "warning" not in recommendations, recommendations
    assert result.returncode == 0, result.stdout[-2000:]


def test_admin_can_log_in_with_its_key_and_sudo(address, admin_key):
    result = ssh(address, ADMIN_USER, admin_key, "id -un && sudo -n id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ADMIN_USER, "root"]


def test_molecule_user_can_still_log_in(address, hostvars):
    result = ssh(address, hostvars["ansible_user"], hostvars["ansible_private_key_file"], "id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "molecule"


def test_root_cannot_log_in_even_with_a_key(host, address, admin_key):
    """Give root the admin's key: PermitRootLogin/AllowUsers must still refuse it."""
    pub = Path(admin_key + ".pub").read_text().strip()
    host.check_output("sudo install -d -m 0700 /root/.ssh")
    host.check_output(f"echo '{pub}' | sudo tee /root/.ssh/authorized_keys >/dev/null")
    try:
        result = ssh(address, "root", admin_key, "true")
    finally:
        host.check_output("sudo rm -f /root/.ssh/authorized_keys")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_password_login_is_not_offered(address, admin_key):
    result = ssh(
        address,
        ADMIN_USER,
        admin_key,
        "true",
        "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
    )  # fmt: skip
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_admin_password_is_locked(host):
    assert host.check_output(f"sudo passwd -S {ADMIN_USER}").split()[1] == "L"
    assert f"{ADMIN_USER}" in host.group("sudo").members


def test_agent_forwarding_is_refused(address, admin_key):
    """A client with a running agent asks for forwarding (-A); sshd must not give a socket."""
    login = " ".join(
        [
            "ssh -A -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            f"-o ControlPath=none -o ConnectTimeout=10 -i {admin_key} {ADMIN_USER}@{address}",
            "'echo ${SSH_AUTH_SOCK:-none}'",
        ]
    )
    result = subprocess.run(
        ["ssh-agent", "sh", "-c", f"ssh-add -q {admin_key} && {login}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
