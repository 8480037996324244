"""The rootless runtime: service account, user manager, networks, image pipeline, unit hardening."""

from __future__ import annotations

import json
import shlex

import pytest

SERVICE_USER = "appliance"
SERVICE_HOME = "/var/lib/appliance"

# Containers of this helper's roles; Traefik and code-server have their own test files,
# but the account-wide checks (no host root, hardening) below cover every running container.
OWN_CONTAINERS = ("redis", "prometheus")
BASE_IMAGE = "localhost/appliance/base:trixie"


def test_service_account_is_unprivileged(host):
    user = host.user(SERVICE_USER)
    assert user.exists
    assert user.uid != 0
    assert user.home == SERVICE_HOME
    assert user.shell in ("/usr/sbin/nologin", "/bin/false")
    assert not {"sudo", "adm", "wheel", "root"} & set(user.groups)
    assert host.file(SERVICE_HOME).mode == 0o700
    shadow = host.check_output(f"sudo -n getent shadow {SERVICE_USER}").split(":")
    assert shadow[1].startswith("!"), "the service account must have no usable password"


def test_subordinate_ids_and_linger(host):
    for path in ("/etc/subuid", "/etc/subgid"):
        lines = [line for line in host.file(path).content_string.splitlines() if line]
        mine = [line for line in lines if line.split(":")[0] == SERVICE_USER]
        assert len(mine) == 1, f"{path}: {lines}"
        assert int(mine[0].split(":")[2]) >= 65536
    assert host.file(f"/var/lib/systemd/linger/{SERVICE_USER}").exists


def test_unprivileged_port_start(host):
    assert host.check_output("sysctl -n net.ipv4.ip_unprivileged_port_start") == "80"


def test_user_manager_running(as_service):
    state = as_service("systemctl --user is-system-running").stdout.strip()
    failed = as_service("systemctl --user --failed --no-legend --plain").stdout
    assert state == "running", f"user manager {state}; failed units:\n{failed}"


UNITS = ("api-redis-network", "edge-metrics-network", "redis", "prometheus")


@pytest.mark.parametrize("unit", [f"{name}.service" for name in UNITS])
def test_unit_active_under_user_manager(as_service, unit):
    result = as_service(f"systemctl --user is-active {unit}")
    assert result.stdout.strip() == "active", as_service(f"systemctl --user status {unit}").stdout


@pytest.mark.parametrize("name", OWN_CONTAINERS)
def test_unit_restarts_and_starts_at_boot(as_service, name):
    show = as_service(f"systemctl --user show --property=Restart,WantedBy {name}.service").stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["Restart"] == "always"
    assert "default.target" in props["WantedBy"].split()


INTERNAL = ("edge-api", "edge-ide", "edge-metrics", "api-redis", "scrape-api")
EGRESS = ("egress-prometheus", "egress-alertmanager", "egress-traefik")


@pytest.mark.parametrize("network", INTERNAL + EGRESS)
def test_only_egress_networks_route_out_and_all_are_isolated(podman_inspect, network):
    internal = "true" if network in INTERNAL else "false"
    assert podman_inspect(network, "{{.Internal}}") == internal
    assert podman_inspect(network, '{{index .Options "isolate"}}') == "true"


def _in_container(network: str, script: str) -> str:
    return (
        f"podman run --rm --network={network} --pull=never --cap-drop=all {BASE_IMAGE} "
        f"bash -c {shlex.quote(script)}"
    )


# pasta maps this address to the host (host.containers.internal); the machine's sshd answers there.
HOST_VIA_PASTA = "169.254.1.2"
ROUTES_AND_PROBE = (
    'awk \'NR > 1 && $2 == "00000000" {print "default-route"}\' /proc/net/route; '
    f"timeout 5 bash -c 'exec 3<>/dev/tcp/{HOST_VIA_PASTA}/22' && echo open || echo closed"
)


def test_internal_network_has_no_egress_egress_network_has(as_service):
    """The same probe on both kinds: an egress network has a default route and reaches the host."""
    egress = as_service(_in_container("egress-prometheus", ROUTES_AND_PROBE))
    internal = as_service(_in_container("api-redis", ROUTES_AND_PROBE))
    assert egress.stdout.split() == ["default-route", "open"], egress.stdout + egress.stderr
    assert internal.stdout.split() == ["closed"], internal.stdout + internal.stderr
    assert "Network is unreachable" in internal.stderr


def _running_containers(as_service) -> list[str]:
    result = as_service("podman ps --format '{{.Names}}'")
    assert result.rc == 0, result.stderr
    return result.stdout.split()


def test_own_containers_run(as_service):
    running = _running_containers(as_service)
    assert set(OWN_CONTAINERS) <= set(running), running


def test_no_container_process_runs_as_host_root(host, as_service):
    running = _running_containers(as_service)
    assert running
    for name in running:
        top = as_service(f"podman top {name} huser,user,args")
        assert top.rc == 0, top.stderr
        rows = top.stdout.splitlines()[1:]
        assert rows, f"{name}: no processes"
        for row in rows:
            host_user = row.split()[0]
            assert host_user not in ("root", "0"), f"{name}: {row}"


@pytest.mark.parametrize("name", OWN_CONTAINERS)
def test_container_hardening(host, podman_inspect, name):
    info = json.loads(podman_inspect(name, "{{json .}}"))
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert [c.upper() for c in info["HostConfig"]["CapDrop"]] and not info["EffectiveCaps"]
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    assert info["HostConfig"]["LogConfig"]["Type"] == "journald"
    assert info["Config"]["Healthcheck"]["Test"], "no health check"
    assert info["State"]["Health"]["Status"] == "healthy"
    # the kernel's view of the main process: no capabilities at all, no_new_privs set
    status = host.check_output(f"sudo -n cat /proc/{info['State']['Pid']}/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(fields[cap].strip(), 16) == 0, f"{name}: {cap}={fields[cap].strip()}"
    assert fields["NoNewPrivs"].strip() == "1"
    uid_host = int(fields["Uid"].split()[0])
    assert uid_host >= 65536, f"{name} runs as host UID {uid_host}, expected a subordinate UID"


@pytest.mark.parametrize("name", OWN_CONTAINERS)
def test_image_built_locally_with_context_hash(podman_inspect, name):
    image = podman_inspect(name, "{{.ImageName}}")
    assert image == f"localhost/appliance/{name}:local"
    label = podman_inspect(image, '{{index .Labels "appliance.context-hash"}}')
    assert len(label) == 64


def test_image_build_is_skipped_when_inputs_unchanged(as_service):
    result = as_service("appliance-image-build redis")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "unchanged localhost/appliance/redis:local"


def test_base_image_is_kept_while_young(as_service):
    result = as_service("appliance-base-image")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "unchanged localhost/appliance/base:trixie"


def test_auto_update_knows_the_local_images(as_service):
    """The weekly refresh restarts containers through `podman auto-update` (AutoUpdate=local)."""
    result = as_service(
        "podman auto-update --dry-run --format '{{.Container}} {{.Policy}} {{.Updated}}'"
    )
    assert result.rc == 0, result.stderr
    # lines look like "956d1eebea8c (prometheus) local false"
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    names = {row[1].strip("()") for row in rows}
    assert set(OWN_CONTAINERS) <= names, rows
    assert all(row[2:] == ["local", "false"] for row in rows), rows


def test_weekly_refresh_timer(as_service):
    timer = "appliance-image-refresh.timer"
    assert as_service(f"systemctl --user is-enabled {timer}").stdout.strip() == "enabled"
    assert as_service(f"systemctl --user is-active {timer}").stdout.strip() == "active"
    calendar = as_service(f"systemctl --user show --property=TimersCalendar {timer}")
    assert "weekly" in calendar.stdout or "Mon *-*-* 00:00:00" in calendar.stdout


def test_secrets_are_not_in_units_or_environment(host, as_service, podman_inspect):
    password = host.check_output("sudo -n cat /etc/appliance/secrets/redis-api-password")
    assert len(password) >= 32
    for name in OWN_CONTAINERS:
        assert password not in podman_inspect(name, "{{json .Config.Env}}")
    units = as_service("cat ~/.config/containers/systemd/*").stdout
    assert password not in units
    mode = host.file("/etc/appliance/secrets").mode
    assert mode == 0o700
