"""Logs that last, on the converged appliance: a forced rotation while the services run.

After ``logrotate --force`` the API's audit writer and Traefik both write to fresh files (the
API notices the rename, Traefik is told by USR1 through Podman); the audit chain verifies
over the rotated and the current file, against the anchors root recorded; a hand-edited
rotated file is reported.
"""

from __future__ import annotations

import time

import pytest
from on_host import api_status_on_host

AUDIT = "/var/log/appliance/ml-api/audit.log"
ACCESS = "/var/log/appliance/traefik/access.log"


def _lines(host, path: str) -> int:
    out = host.run(f"test -f {path} && wc -l < {path} || echo 0")
    return int(out.stdout.strip() or 0)


def _until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def rotated(host):
    """One forced rotation while the services run, with an anchor taken before and after."""
    assert host.run("logrotate --debug /etc/logrotate.d/appliance").rc == 0
    assert api_status_on_host(host, "GET", "/v2/health/ready").stdout == "200"
    anchor = host.run("systemctl start appliance-audit-anchor.service")
    assert anchor.rc == 0, anchor.stderr
    result = host.run("logrotate --force --verbose /etc/logrotate.d/appliance")
    assert result.rc == 0, result.stdout + result.stderr

    def fresh_lines() -> bool:
        api_status_on_host(host, "GET", "/v2/health/ready")
        return _lines(host, AUDIT) > 0 and _lines(host, ACCESS) > 0

    _until(fresh_lines, "the API and Traefik to write to the new files")
    assert host.run("systemctl start appliance-audit-anchor.service").rc == 0
    return AUDIT + ".1"


def test_rotation_keeps_every_writer_writing_and_the_chain_whole(host, rotated):
    assert host.file(rotated).exists and host.file(ACCESS + ".1").exists
    assert host.file(AUDIT).user == "appliance-ml-api" and host.file(AUDIT).mode == 0o640
    verify = host.run("appliance-audit-verify")
    assert verify.rc == 0, verify.stdout + verify.stderr
    assert "anchors match" in verify.stdout
    assert host.run("journalctl -t appliance-audit-anchor -o cat | grep -c '^seq='").stdout != "0"


def test_a_hand_edited_rotated_file_is_reported(host, rotated):
    assert host.run(f"cp -p {rotated} /root/audit.log.1.orig").rc == 0
    try:
        edit = host.run(f'sed -i \'1s/"outcome":"[a-z_]*"/"outcome":"forged"/\' {rotated}')
        assert edit.rc == 0
        assert host.run(f"cmp -s {rotated} /root/audit.log.1.orig").rc == 1, "nothing was edited"
        verify = host.run("appliance-audit-verify")
        assert verify.rc == 1, verify.stdout + verify.stderr
        assert "does not match its hash" in verify.stdout
    finally:
        host.run(f"cp -p /root/audit.log.1.orig {rotated}")
    assert host.run("appliance-audit-verify").rc == 0
