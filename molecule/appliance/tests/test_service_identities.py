"""One UID per service (docs/isolation.md, "One UID per service"): no two containers share a
host UID, none runs as root or as the service account, each service owns what it writes, and a
process that escaped from the IDE (the IDE's host UID, outside every container) can touch
nothing of the API's.

The escape is played on the host with setpriv: the IDE's host UID and group, no other groups,
which is what a process that broke out of the container's namespaces would hold.
"""

from __future__ import annotations

import shlex

import pytest
from on_host import AS_SERVICE

SERVICE_ACCOUNT = "appliance"
CONTAINERS = ("traefik", "ml-api", "redis", "prometheus", "alertmanager", "code-server")
REGISTRY = "/srv/appliance/models"
AUDIT_DIR = "/var/log/appliance/ml-api"
USERS_DIR = "/var/lib/appliance/ml-api/users"
DROPBOX = "/srv/appliance/dropbox"
WORKSPACE = "/srv/appliance/workspace"
TRAEFIK_LOGS = "/var/log/appliance/traefik"


def account(name: str) -> str:
    return f"{SERVICE_ACCOUNT}-{name}"


def _host_uids(host, name: str) -> set[int]:
    """Real, effective, saved and file-system UIDs of every process of the container."""
    pids = host.check_output(AS_SERVICE + f"podman top {name} hpid").split()[1:]
    assert pids, f"{name} has no processes"
    uids: set[int] = set()
    for pid in pids:
        status = host.check_output(f"cat /proc/{pid}/status")
        line = next(x for x in status.splitlines() if x.startswith("Uid:"))
        uids.update(int(u) for u in line.split()[1:])
    return uids


def test_every_container_runs_as_its_own_host_account(host):
    service_uid = host.user(SERVICE_ACCOUNT).uid
    seen: dict[str, int] = {}
    for name in CONTAINERS:
        uids = _host_uids(host, name)
        assert len(uids) == 1, f"{name} runs under several host UIDs: {uids}"
        (uid,) = uids
        assert uid not in (0, service_uid), f"{name} runs as host UID {uid}"
        assert uid == host.user(account(name)).uid, f"{name}: {uid} is not {account(name)}"
        seen[name] = uid
    assert len(set(seen.values())) == len(CONTAINERS), f"two services share a host UID: {seen}"


def test_the_host_accounts_cannot_log_in(host):
    for name in CONTAINERS:
        user = host.user(account(name))
        assert user.shell == "/usr/sbin/nologin", user.shell
        assert user.password in ("!", "!*", "*"), f"{user.name} has a password"
        assert user.group == account(name) and user.groups == [account(name)], user.groups


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        (REGISTRY, "ml-api", "ml-api", 0o750),
        (AUDIT_DIR, "ml-api", "ml-api", 0o750),
        (f"{AUDIT_DIR}/audit.log", "ml-api", "ml-api", 0o640),
        (USERS_DIR, "ml-api", "ml-api", 0o700),
        (TRAEFIK_LOGS, "traefik", "traefik", 0o750),
        (WORKSPACE, "code-server", "code-server", 0o750),
        (DROPBOX, "code-server", "ml-api", 0o2750),
    ],
)
def test_each_service_owns_what_it_writes(host, path, owner, group, mode):
    with host.sudo():
        f = host.file(path)
        assert (f.user, f.group, f.mode) == (account(owner), account(group), mode)
        # and everything inside: nothing left of an earlier UID or a restore
        stray = host.check_output(
            f"find {path} ! -user {account(owner)} -printf '%u %p\\n' -o "
            f"! -group {account(group)} -printf '%g %p\\n'"
        )
    assert stray == "", stray


def _as_ide_escape(host, script: str):
    uid = host.user(account("code-server")).uid
    gid = host.group(account("code-server")).gid
    return host.run(
        f"setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all "
        f"bash -c {shlex.quote(script)}"
    )


def test_an_escape_from_the_ide_reaches_nothing_of_the_api(host):
    # The control: the escaped process is the IDE, so its own files are its to write.
    own = _as_ide_escape(host, f"touch {WORKSPACE}/.escape-probe && rm {WORKSPACE}/.escape-probe")
    assert own.rc == 0, own.stderr
    for attempt in (
        f"ls {REGISTRY}",
        f"touch {REGISTRY}/.escape-probe",
        f"cat {AUDIT_DIR}/audit.log",
        f"echo forged >> {AUDIT_DIR}/audit.log",
        f"ls {USERS_DIR}",
        "ls /etc/appliance/secrets",
        f"touch {TRAEFIK_LOGS}/.escape-probe",
    ):
        result = _as_ide_escape(host, attempt)
        assert result.rc != 0 and "Permission denied" in result.stderr, (attempt, result.stderr)


def test_the_api_reads_the_drop_box_through_its_group_and_cannot_change_it(host):
    uid = host.user(account("ml-api")).uid
    gid = host.group(account("ml-api")).gid
    as_api = f"setpriv --reuid={uid} --regid={gid} --clear-groups bash -c "
    assert host.run(as_api + shlex.quote(f"ls {DROPBOX}")).rc == 0
    denied = host.run(as_api + shlex.quote(f"touch {DROPBOX}/.probe"))
    assert denied.rc != 0 and "Permission denied" in denied.stderr, denied.stderr
    # What the IDE writes there keeps the API's group (setgid), with the IDE's umask.
    made = host.run(
        AS_SERVICE
        + "podman exec code-server bash -c "
        + shlex.quote("mkdir -p ~/dropbox/.probe && echo x > ~/dropbox/.probe/f")
    )
    assert made.rc == 0, made.stderr
    try:
        with host.sudo():
            f = host.file(f"{DROPBOX}/.probe/f")
            assert (f.user, f.group) == (account("code-server"), account("ml-api"))
        assert host.run(as_api + shlex.quote(f"cat {DROPBOX}/.probe/f")).stdout == "x\n"
    finally:
        host.run(f"rm -rf {DROPBOX}/.probe")
