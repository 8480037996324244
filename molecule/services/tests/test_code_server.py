"""code-server on the services test machine: reachable only through Traefik at dev.localhost,
password-protected with an argon2 hash, running as the service account with the ML libraries.

code-server allows 2 failed logins a minute, so this module tries a wrong password once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SERVICE_USER = "appliance"
# The IDE's own host account and its UID in the container (podman_service_ids): not the
# service account's, nor any other service's.
IDE_ACCOUNT = f"{SERVICE_USER}-code-server"
PASSWORD_FILE = "/etc/appliance/secrets/code-server-password"
HASH_FILE = "/etc/appliance/secrets/code-server-password.argon2"
WORKSPACE = "/srv/appliance/workspace"
WORKSPACE_LOCK = Path(__file__).resolve().parents[3] / "workspace" / "requirements.txt"


@pytest.fixture(scope="module")
def password(host) -> str:
    with host.sudo():
        return host.file(PASSWORD_FILE).content_string


def dev(address: str, ca_file: Path, path: str, *args: str) -> tuple[str, str]:
    """GET/POST https://dev.localhost/PATH; returns (response headers, body)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca_file),
         "--resolve", f"dev.localhost:443:{address}", "-D", "-", *args,
         f"https://dev.localhost{path}"],
        capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    return head, body


def podman(host, *args: str) -> str:
    uid = host.user(SERVICE_USER).uid
    with host.sudo(SERVICE_USER):
        return host.check_output(
            f"cd /tmp && XDG_RUNTIME_DIR=/run/user/{uid} podman " + " ".join(args)
        )


def test_code_server_unit_is_active(host):
    uid = host.user(SERVICE_USER).uid
    with host.sudo(SERVICE_USER):
        state = host.run(
            f"XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user is-active code-server.service"
        ).stdout.strip()
    assert state == "active"


def test_ide_redirects_to_login_without_a_session(address, ca_file):
    head, _ = dev(address, ca_file, "/")
    assert head.split()[1] == "302"
    assert "location: ./login" in head.lower()


def test_login_page_is_served_through_traefik(address, ca_file):
    head, body = dev(address, ca_file, "/login")
    assert head.split()[1] == "200"
    assert 'type="password"' in body and "code-server" in body
    assert "strict-transport-security:" in head.lower()


def test_wrong_password_is_refused(address, ca_file):
    head, body = dev(address, ca_file, "/login", "--data-urlencode", "password=not-the-password")
    assert "Incorrect password" in body
    assert "code-server-session" not in head


def test_right_password_opens_a_session(address, ca_file, password):
    head, _ = dev(address, ca_file, "/login", "--data-urlencode", f"password={password}")
    assert head.split()[1] == "302", head
    assert "set-cookie: code-server-session=" in head.lower()


def test_password_is_stored_as_argon2_hash_only(host, password):
    with host.sudo():
        pw = host.file(PASSWORD_FILE)
        assert pw.user == "root" and pw.mode == 0o600
        assert host.file(HASH_FILE).content_string.startswith("$argon2id$")
        unit = host.file("/var/lib/appliance/.config/containers/systemd/code-server.container")
        assert password not in unit.content_string and "argon2" not in unit.content_string
    env = podman(host, "inspect", "--format", "'{{json .Config.Env}}'", "code-server")
    assert password not in env and "argon2" not in env


def test_port_is_not_published(host, address):
    assert podman(host, "port", "code-server").strip() == ""
    probe = subprocess.run(
        ["curl", "-sS", "--max-time", "5", f"http://{address}:8080/"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert probe.returncode != 0


def test_ml_libraries_match_the_workspace_pins(host):
    """The IDE trains with exactly the scikit-learn/numpy/joblib the API unpickles with."""
    pins = dict(
        line.split(" ")[0].split("==")
        for line in WORKSPACE_LOCK.read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    )
    out = podman(
        host, "exec", "code-server", "python3", "-c",
        "'import sklearn, numpy, joblib, pandas; "
        "print(sklearn.__version__, numpy.__version__, joblib.__version__)'",
    )  # fmt: skip
    assert out.split() == [pins["scikit-learn"], pins["numpy"], pins["joblib"]]


def test_runs_as_its_own_account_not_root_nor_the_service_account(host):
    inside = podman(host, "inspect", "--format", "'{{.Config.User}}'", "code-server").strip()
    uid, _, gid = inside.partition(":")
    assert podman(host, "exec", "code-server", "id", "-u").strip() == uid != "0"
    assert gid == uid
    pid = podman(host, "inspect", "--format", "'{{.State.Pid}}'", "code-server").strip()
    host_uid = host.check_output(f"ps -o uid= -p {pid}").strip()
    assert host_uid == str(host.user(IDE_ACCOUNT).uid)
    assert host_uid not in {"0", str(host.user(SERVICE_USER).uid)}


def test_workspace_is_mounted_writable_for_the_ide(host):
    podman(host, "exec", "code-server", "touch", "/home/coder/workspace/.mount-probe")
    with host.sudo():
        probe = host.file(f"{WORKSPACE}/.mount-probe")
        assert probe.exists and probe.user == IDE_ACCOUNT
        host.run(f"rm -f {WORKSPACE}/.mount-probe")


@pytest.mark.parametrize("name", ["code-server", "traefik"])
def test_container_is_locked_down(host, name):
    fmt = (
        "'{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} "
        "{{json .EffectiveCaps}} {{json .HostConfig.SecurityOpt}}'"
    )
    readonly, user, caps, secopt = podman(host, "inspect", "--format", fmt, name).split(" ", 3)
    assert readonly == "true"
    assert user not in ("", "0", "root", "0:0")
    assert caps in ("null", "[]")
    assert "no-new-privileges" in secopt
