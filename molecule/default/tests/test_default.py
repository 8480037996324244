"""Checks that the nspawn test machine is a usable Debian 13 host for the appliance's roles."""

import pytest
from ssh_login import ssh

PROOF_USER = "hello"


def test_systemd_reached_running(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"state {state}, failed units:\n{failed}"


def test_machine_is_debian_13(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.split(".")[0] == "13"


def test_machine_is_an_nspawn_container(host):
    assert host.run("systemd-detect-virt --container").stdout.strip() == "systemd-nspawn"


def test_ssh_login_with_the_platform_key(host):
    """A fresh SSH login from the host, independent of the connection testinfra reuses."""
    hostvars = host.ansible.get_variables()
    result = ssh(
        hostvars["ansible_host"],
        hostvars["ansible_user"],
        hostvars["ansible_private_key_file"],
        "id -un && sudo -n id -un",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["molecule", "root"]


def test_sshd_runs(host):
    assert host.service("ssh").is_running


def test_proof_user_lingers(host):
    assert host.file(f"/var/lib/systemd/linger/{PROOF_USER}").exists
    linger = host.check_output(f"loginctl show-user {PROOF_USER} --property=Linger --value")
    assert linger == "yes"


@pytest.fixture
def user_systemctl(host):
    def run(*args: str) -> str:
        return host.check_output(f"systemctl --user --machine={PROOF_USER}@.host " + " ".join(args))

    return run


def test_quadlet_service_active_under_user_manager(host, user_systemctl):
    assert user_systemctl("is-active", "hello.service") == "active"
    fragment = user_systemctl("show", "hello.service", "--property=SourcePath", "--value")
    assert fragment.endswith("/.config/containers/systemd/hello.container")


def test_container_runs_rootless(host):
    uid = host.user(PROOF_USER).uid
    ps = host.run(
        f"cd / && runuser -u {PROOF_USER} -- env XDG_RUNTIME_DIR=/run/user/{uid} "
        "podman ps --filter name=^hello$ --format '{{.Names}} {{.Image}}'"
    )
    assert ps.rc == 0, ps.stderr
    assert ps.stdout.strip() == "hello localhost/hello-proof:1"
    # The container's processes belong to the unprivileged user on the machine.
    httpd_owner = host.check_output("ps -o user= -C busybox")
    assert set(httpd_owner.split()) == {PROOF_USER}


def test_container_serves_through_published_port(host):
    page = host.check_output("busybox wget -q -O - http://127.0.0.1:8080/")
    assert page == "hello from a rootless quadlet"
