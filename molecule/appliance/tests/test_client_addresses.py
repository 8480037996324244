"""Clients at two real addresses: a stranger's failed logins throttle the stranger, not the user.

Two network namespaces on the appliance, each a client with its own address on its own veth
(198.51.100.2 and 203.0.113.2, documentation ranges outside the metrics allow-list), connect to
the host's port 443 the way an outside client does. Traefik listens on sockets systemd opened in
the host's namespace, so it sees those addresses; before, rootless port forwarding made every
client 10.89.x.x, and one stranger's failures locked every user out.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import pytest

SECRETS = "/etc/appliance/secrets/ml-api-users"
AUDIT_LOG = "/var/log/appliance/ml-api/audit.log"
ACCESS_LOG = "/var/log/appliance/traefik/access.log"
# The attacked name: a viewer, so no other test's login shares its counters.
VICTIM = "victor"

# (namespace, client address, host-side address): TEST-NET-2 and TEST-NET-3.
STRANGER = ("appl-client-a", "198.51.100.2", "198.51.100.1")
USER = ("appl-client-b", "203.0.113.2", "203.0.113.1")

# argv: JSON list of requests {host, method, path, form, password_file, headers, repeat}; prints a
# JSON list of [status, Retry-After or null, body] per request sent. A password comes from a file
# (root-only on the host), never from the command line.
_CLIENT = r"""
import json, socket, ssl, sys, urllib.parse
target, requests = sys.argv[1], json.loads(sys.argv[2])
ctx = ssl.create_default_context(cafile="/etc/appliance/ca.crt")
out = []
for req in requests:
    form = dict(req.get("form", {}))
    if req.get("password_file"):
        form["password"] = open(req["password_file"]).read().strip()
    body = urllib.parse.urlencode(form).encode() if form else b""
    headers = {"Host": req["host"], "Connection": "close", "Content-Length": str(len(body))}
    if form:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers.update(req.get("headers", {}))
    for _ in range(req.get("repeat", 1)):
        with ctx.wrap_socket(socket.create_connection((target, 443), timeout=15),
                             server_hostname=req["host"]) as tls:
            head = f"{req['method']} {req['path']} HTTP/1.1\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            tls.sendall(head.encode() + body)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(l.split(": ", 1) for l in lines[1:] if ": " in l)
        retry = {k.lower(): v for k, v in fields.items()}.get("retry-after")
        text = payload[:300].decode("utf-8", "replace")
        out.append([int(lines[0].split(" ", 2)[1]), retry, text])
print(json.dumps(out))
"""


def _namespace_up(host, name: str, client: str, side: str) -> None:
    veth = name[-8:] + "0"
    for command in (
        f"ip netns add {name}",
        f"ip link add {veth} type veth peer name eth0 netns {name}",
        f"ip addr add {side}/24 dev {veth}",
        f"ip link set {veth} up",
        f"ip -n {name} addr add {client}/24 dev eth0",
        f"ip -n {name} link set eth0 up",
        f"ip -n {name} link set lo up",
        f"ip -n {name} route add default via {side}",
    ):
        result = host.run(command)
        assert result.rc == 0, f"{command}: {result.stderr}"


def _namespace_down(host, name: str) -> None:
    host.run(f"ip link del {name[-8:]}0")
    host.run(f"ip netns del {name}")


@pytest.fixture(scope="module")
def clients(host) -> Iterator[None]:
    for name, _, _ in (STRANGER, USER):
        _namespace_down(host, name)
    try:
        for ns in (STRANGER, USER):
            _namespace_up(host, *ns)
        yield
    finally:
        for name, _, _ in (STRANGER, USER):
            _namespace_down(host, name)


def _send(host, client: tuple[str, str, str], requests: list[dict]) -> list[list]:
    name, _, side = client
    argv = " ".join(shlex.quote(a) for a in (_CLIENT, side, json.dumps(requests)))
    result = host.run(f"ip netns exec {name} python3 -c {argv}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def _login(user: str, *, right: bool, repeat: int = 1, headers: dict | None = None) -> dict:
    req = {"host": "api.localhost", "method": "POST", "path": "/token", "repeat": repeat}
    req["form"] = {"username": user} if right else {"username": user, "password": "not-it"}
    if right:
        req["password_file"] = f"{SECRETS}/{user}"
    req["headers"] = headers or {}
    return req


def _records(host, path: str, since_line: int) -> list[dict]:
    text = host.check_output(f"tail -n +{since_line + 1} {path}")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _line_count(host, path: str) -> int:
    return int(host.check_output(f"wc -l < {path}").strip())


def test_a_strangers_failures_do_not_lock_the_user_out(host, clients) -> None:
    audit_from, access_from = _line_count(host, AUDIT_LOG), _line_count(host, ACCESS_LOG)

    failed = _send(host, STRANGER, [_login(VICTIM, right=False, repeat=60)])
    statuses = [status for status, _, _ in failed]
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) >= 1 and statuses[-1] == 429, statuses

    # The same user, from another address, with the right password: let in at once.
    [(status, _, body)] = _send(host, USER, [_login(VICTIM, right=True)])
    assert status == 200, body
    # The stranger stays throttled, even with the right password, and is told for how long.
    [(status, retry, body)] = _send(host, STRANGER, [_login(VICTIM, right=True)])
    assert status == 429, body
    assert retry is not None and int(retry) >= 1, retry

    # Both addresses, as they are, in Traefik's access log and in the API's audit log.
    access = _records(host, ACCESS_LOG, access_from)
    access = [r for r in access if r.get("RequestPath") == "/token"]
    assert {STRANGER[1], USER[1]} <= {r["ClientHost"] for r in access}, access[-3:]
    audit = [r for r in _records(host, AUDIT_LOG, audit_from) if r.get("route") == "/token"]
    by_address = {r["client_ip"] for r in audit}
    assert {STRANGER[1], USER[1]} <= by_address, by_address
    assert not {ip for ip in by_address if ip.startswith("10.89.")}, by_address


def test_a_forged_forwarded_for_from_outside_is_not_believed(host, clients) -> None:
    audit_from = _line_count(host, AUDIT_LOG)
    forged = {"X-Forwarded-For": "192.0.2.77", "X-Real-Ip": "192.0.2.77"}
    [(status, _, body)] = _send(host, USER, [_login("nobody-here", right=False, headers=forged)])
    assert status == 401, body
    audit = [r for r in _records(host, AUDIT_LOG, audit_from) if r.get("route") == "/token"]
    assert [r["client_ip"] for r in audit] == [USER[1]], audit


def test_metrics_allow_list_refuses_an_outside_address(host, clients) -> None:
    """metrics.localhost answers 403 to an address outside the allow-list, and asks the
    loopback (inside it) for a password: the list sees real addresses now."""
    probe = {"host": "metrics.localhost", "method": "GET", "path": "/"}
    [(status, _, body)] = _send(host, STRANGER, [probe])
    assert status == 403, body
    argv = " ".join(shlex.quote(a) for a in (_CLIENT, "127.0.0.1", json.dumps([probe])))
    [(status, _, body)] = json.loads(host.check_output(f"python3 -c {argv}"))
    assert status == 401, body
