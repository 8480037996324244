"""Operators as a list: each logs in with their own key; removing one takes their access away
at once (keys, sudo, groups, sessions), is recorded in the journal, and can be undone."""

import json
import subprocess
import time

import pytest
from conftest import PLAYBOOK_ENV, flat, playbook_command
from ssh_login import ssh, ssh_argv

ALICE = "alice"


@pytest.fixture(scope="module")
def alice_key(ephemeral_dir):
    return str(ephemeral_dir / "alice_ed25519")


def _operators(ephemeral_dir, alice_state: str) -> list[dict]:
    def key(name: str) -> list[str]:
        return [(ephemeral_dir / f"{name}_ed25519.pub").read_text().strip()]

    return [
        {"name": "opsadmin", "ssh_keys": key("opsadmin")},
        {"name": ALICE, "comment": "Alice Operator", "ssh_keys": key(ALICE), "state": alice_state},
    ]


def _converge_operators(ephemeral_dir, alice_state: str) -> str:
    """The operators' part of the converge, with alice present or absent: its recap."""
    extra = {"hardening_operators": _operators(ephemeral_dir, alice_state)}
    done = subprocess.run(
        playbook_command("--tags", "hardening_admin_user", "-e", json.dumps(extra)),
        capture_output=True,
        text=True,
        env=PLAYBOOK_ENV,
        timeout=600,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return flat(out.rsplit("PLAY RECAP", 1)[1])


def _journal(host) -> str:
    return host.run("sudo journalctl -t appliance-operators --no-pager -o cat").stdout


@pytest.mark.usefixtures("fresh_ssh_budget")
def test_each_operator_logs_in_with_their_own_key_and_sudo(address, admin_key, alice_key):
    for user, key in (("opsadmin", admin_key), (ALICE, alice_key)):
        result = ssh(address, user, key, "id -un && sudo -n id -un")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [user, "root"]
    # A key opens only its own operator's account.
    assert ssh(address, ALICE, admin_key, "true").returncode == 255
    assert ssh(address, "opsadmin", alice_key, "true").returncode == 255


@pytest.mark.usefixtures("fresh_ssh_budget")
def test_removing_an_operator_takes_their_access_and_can_be_undone(
    host, address, alice_key, ephemeral_dir
):
    # Alice is logged in when she is removed: her session must end, not outlive her access.
    session = subprocess.Popen(
        [*ssh_argv(address, ALICE, alice_key), "sleep 600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while host.run(f"pgrep -u {ALICE} -x sleep").rc != 0:
            assert time.monotonic() < deadline, "alice's session did not start"
            time.sleep(0.5)
        before = _journal(host)

        recap = _converge_operators(ephemeral_dir, "absent")
        assert "changed=0" not in recap, recap
        assert session.wait(timeout=30) is not None  # her session ended with the converge
        denied = ssh(address, ALICE, alice_key, "true")
        assert denied.returncode == 255 and "Permission denied" in denied.stderr, denied.stderr
        assert not host.file(f"/etc/sudoers.d/90-{ALICE}").exists
        assert "sudo" not in host.check_output(f"id -nG {ALICE}").split()
        shadow = host.check_output(f"sudo getent shadow {ALICE}").split(":")
        assert shadow[1].startswith("!") and shadow[7] == "1", shadow  # locked, expired 1970
        assert host.user(ALICE).shell == "/usr/sbin/nologin"
        removal = _journal(host)[len(before) :]
        assert f"operator {ALICE} removed" in removal and "running sessions" in removal, removal
        assert host.user("opsadmin").exists and host.file("/etc/sudoers.d/90-opsadmin").exists

        again = _converge_operators(ephemeral_dir, "absent")
        assert "changed=0" in again, again  # removing a removed operator changes nothing
    finally:
        if session.poll() is None:
            session.kill()
        back = _converge_operators(ephemeral_dir, "present")

    # Back as she was: key, sudo, login.
    assert "changed=0" not in back, back
    result = ssh(address, ALICE, alice_key, "id -un && sudo -n id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ALICE, "root"]
    assert f"operator {ALICE} added or changed" in _journal(host)
