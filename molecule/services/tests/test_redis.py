"""Redis: ACL (default user off, least-privilege API user), api-redis only, durable denylist."""

from __future__ import annotations

import shlex
import time

import pytest

API_USER = "mlapi"
PASSWORD_FILE = "/etc/appliance/secrets/redis-api-password"
BASE_IMAGE = "localhost/appliance/base:trixie"


@pytest.fixture(scope="module")
def password(host) -> str:
    return host.check_output(f"sudo -n cat {PASSWORD_FILE}")


@pytest.fixture(scope="module")
def redis_cli(as_service):
    """redis-cli inside the redis container; password (if any) passed via the environment."""

    def run(*args: str, user: str | None = None, secret: str | None = None):
        auth = []
        if user is not None:
            auth = ["--user", user]
        env = f"--env REDISCLI_AUTH={shlex.quote(secret)} " if secret is not None else ""
        argv = " ".join(shlex.quote(a) for a in ["redis-cli", "--no-auth-warning", *auth, *args])
        return as_service(f"podman exec {env}redis {argv}")

    return run


def test_unauthenticated_client_is_refused(redis_cli):
    result = redis_cli("ping")
    assert "NOAUTH" in result.stdout + result.stderr


def test_default_user_is_disabled(redis_cli):
    result = redis_cli("ping", user="default", secret="anything")
    assert "WRONGPASS" in result.stdout + result.stderr


def test_wrong_password_is_refused(redis_cli):
    result = redis_cli("ping", user=API_USER, secret="not-the-password")
    assert "WRONGPASS" in result.stdout + result.stderr


def test_api_user_can_do_its_job(redis_cli, password):
    assert redis_cli("ping", user=API_USER, secret=password).stdout.strip() == "PONG"
    key = "ml:test:acl"
    assert (
        redis_cli("set", key, "1", "EX", "60", user=API_USER, secret=password).stdout.strip()
        == "OK"
    )
    assert redis_cli("incr", key, user=API_USER, secret=password).stdout.strip() == "2"
    script = "return redis.call('INCR', KEYS[1])"
    assert redis_cli("eval", script, "1", key, user=API_USER, secret=password).stdout.strip() == "3"
    assert redis_cli("del", key, user=API_USER, secret=password).stdout.strip() == "1"


@pytest.mark.parametrize(
    "command",
    [
        ["flushall"],
        ["flushdb"],
        ["config", "get", "*"],
        ["config", "set", "appendonly", "no"],
        ["keys", "*"],
        ["debug", "sleep", "0"],
        ["shutdown", "nosave"],
        ["acl", "list"],
        ["module", "list"],
        ["monitor"],
        ["bgsave"],
        ["script", "flush"],
    ],
    ids=lambda c: " ".join(c),
)
def test_api_user_cannot_run_dangerous_commands(redis_cli, password, command):
    result = redis_cli(*command, user=API_USER, secret=password)
    output = result.stdout + result.stderr
    # DEBUG and MODULE are switched off server-wide (enable-*-command no): refused before the ACL.
    assert "NOPERM" in output or "command not allowed" in output, output


def test_api_user_is_confined_to_its_key_prefix(redis_cli, password):
    result = redis_cli("set", "other:key", "1", user=API_USER, secret=password)
    assert "NOPERM" in result.stdout + result.stderr
    script = "return redis.call('SET', 'other:key', '1')"
    result = redis_cli("eval", script, "0", user=API_USER, secret=password)
    assert (
        "NOPERM" in result.stdout + result.stderr
        or "No permissions" in result.stdout + result.stderr
    )


def test_redis_publishes_no_port_and_joins_only_api_redis(host, podman_inspect):
    assert podman_inspect("redis", "{{json .HostConfig.PortBindings}}") in ("{}", "null")
    networks = podman_inspect(
        "redis", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
    )
    assert networks.split() == ["api-redis"]
    assert ":6379" not in host.check_output("ss -Hltn")


def test_redis_unreachable_from_another_network(as_service, podman_inspect):
    """A container on the IDE's network can neither resolve nor connect to Redis."""
    address = podman_inspect("redis", '{{(index .NetworkSettings.Networks "api-redis").IPAddress}}')
    assert address
    probe = (
        "getent hosts redis && echo resolved; "
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/6379' && echo connected; true"
    )
    outside = as_service(
        f"podman run --rm --network=edge-ide --pull=never --cap-drop=all {BASE_IMAGE} "
        f"bash -c {shlex.quote(probe)}"
    )
    assert outside.rc == 0, outside.stderr
    assert "resolved" not in outside.stdout
    assert "connected" not in outside.stdout
    # control: the same probe from api-redis reaches it, so the probe itself works
    inside = as_service(
        f"podman run --rm --network=api-redis --pull=never --cap-drop=all {BASE_IMAGE} "
        f"bash -c {shlex.quote(probe)}"
    )
    assert "resolved" in inside.stdout and "connected" in inside.stdout, (
        inside.stdout + inside.stderr
    )


def test_memory_cap_and_persistence_configured(host):
    conf = host.file("/etc/appliance/redis/redis.conf").content_string
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["maxmemory"] == "64mb"
    assert settings["maxmemory-policy"] == "volatile-ttl"
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"


def test_denylist_survives_a_restart(as_service, redis_cli, password):
    """The API keeps revoked token IDs in a sorted set scored by expiry (no TTL: never evicted)."""
    key, jti, expires = "ml:test:revoked", "jti-under-test", str(int(time.time()) + 600)
    added = redis_cli("zadd", key, expires, jti, user=API_USER, secret=password)
    assert added.stdout.strip() == "1", added.stdout + added.stderr
    time.sleep(1.5)  # appendfsync everysec
    restart = as_service("systemctl --user restart redis.service")
    assert restart.rc == 0, restart.stderr
    assert redis_cli("zscore", key, jti, user=API_USER, secret=password).stdout.strip() == expires
    redis_cli("del", key, user=API_USER, secret=password)
