"""The firewall with every service running, probed from the host side of the veth, where a
client on the network stands: over IPv4 and IPv6, TCP and UDP, only 22, 80 and 443 answer. More
listens on the machine's addresses (node-exporter, the webhook sink, and a TCP and UDP listener
this test adds on every address family), and each of those is shown to answer from the machine
itself, so a silent probe means the firewall, not an absent service."""

from __future__ import annotations

import ipaddress
import random
import re
import subprocess
import time

import pytest
from port_scan import host_interface, scan, udp_probe

OPEN_PORTS = {22, 80, 443}
LIVE_PORT = 40007  # the test's own listener, TCP and UDP, on [::] (IPv4 too)
CLOSED_UDP = 40008  # nothing listens: a reject would answer with port-unreachable
# Ports the appliance's services use inside, plus a fixed random sample above 1024.
SAMPLE_HIGH = sorted(
    {3000, 5000, 6379, 8000, 8080, 8081, 8443, 9090, 9093, 9094, 9100, 9199, 65535}
    | set(random.Random(40).sample(range(1025, 65536), 100))  # noqa: S311 (a fixed sample)
)

_LISTENER = f"""
import selectors, socket
sel = selectors.DefaultSelector()
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", {LIVE_PORT}))
    if kind == socket.SOCK_STREAM:
        s.listen()
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s.type == socket.SOCK_STREAM:
            conn, _ = s.accept()
            conn.sendall(b"live")
            conn.close()
        else:
            data, peer = s.recvfrom(512)
            s.sendto(data, peer)
"""

# On the machine: one TCP read and one UDP echo to ADDRESS:LIVE_PORT (through its loopback).
_FROM_INSIDE = f"""
import socket, sys
address = sys.argv[1]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
with socket.create_connection((address, {LIVE_PORT}), timeout=5) as tcp:
    assert tcp.recv(16) == b"live"
with socket.socket(family, socket.SOCK_DGRAM) as udp:
    udp.settimeout(5)
    udp.sendto(b"echo", (address, {LIVE_PORT}))
    assert udp.recv(16) == b"echo"
print("answers")
"""


@pytest.fixture(scope="module")
def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def ipv6(host, address):
    """A ULA address on each side of the veth (the test platform gives the machine none)."""
    interface = host_interface(address)
    net = ipaddress.IPv6Network(f"fd42:213:{int(address.split('.')[2]):x}::/64")
    machine, controller = str(net[2]), str(net[1])
    host.check_output(f"ip -6 addr add {machine}/64 dev host0 nodad")
    subprocess.run(["ip", "-6", "addr", "add", f"{controller}/64", "dev", interface, "nodad"],
                   check=True)  # fmt: skip
    try:
        yield machine
    finally:
        subprocess.run(["ip", "-6", "addr", "del", f"{controller}/64", "dev", interface],
                       check=False)  # fmt: skip
        host.run(f"ip -6 addr del {machine}/64 dev host0")


@pytest.fixture(scope="module")
def live_listener(host):
    unit = "test-live-listener"
    host.run(f"systemctl stop {unit}")
    started = host.run(f"systemd-run --unit={unit} --collect python3 -c '{_LISTENER}'")
    assert started.rc == 0, started.stderr
    deadline = time.monotonic() + 30
    while f":{LIVE_PORT} " not in host.check_output("ss -Hlntu") + " ":
        assert time.monotonic() < deadline, "the test's listener did not start"
        time.sleep(0.5)
    yield LIVE_PORT
    host.run(f"systemctl stop {unit}")


def _listening_tcp_ports(host) -> set[int]:
    """TCP ports listening on an address other than loopback."""
    ports = set()
    for line in host.check_output("ss -Hltn").splitlines():
        local = line.split()[3]
        addr, port = local.rsplit(":", 1)
        if not re.match(r"^(127\.|\[::1\])", addr):
            ports.add(int(port))
    return ports


def _answers_from_inside(host, address: str) -> str:
    """ "answers" once the test's listener answers TCP and UDP on ADDRESS, asked on the machine
    (a new address may take a moment); else the last error."""
    deadline = time.monotonic() + 20
    while True:
        result = host.run(f"python3 -c '{_FROM_INSIDE}' {address}")
        if result.rc == 0 or time.monotonic() > deadline:
            return result.stdout.strip() if result.rc == 0 else result.stderr
        time.sleep(1)


def test_ipv4_only_ssh_http_https_answer_with_the_services_running(host, address, live_listener):
    listening = _listening_tcp_ports(host)
    # Services that do listen beyond loopback: the firewall, not their absence, keeps them off.
    assert {9100, 9199, live_listener} <= listening, listening
    assert _answers_from_inside(host, address) == "answers"
    ports = sorted(set(range(1, 1025)) | listening | set(SAMPLE_HIGH))
    result = scan(address, ports)
    answering = {port for port, state in result.items() if state != "filtered"}
    assert answering == OPEN_PORTS, {p: result[p] for p in answering ^ OPEN_PORTS}
    assert {result[p] for p in OPEN_PORTS} == {"open"}  # sshd and Traefik are live


def test_ipv6_only_ssh_http_https_answer(host, ipv6, live_listener):
    assert _answers_from_inside(host, ipv6) == "answers"
    ports = sorted(set(range(1, 1025)) | _listening_tcp_ports(host) | set(SAMPLE_HIGH))
    result = scan(ipv6, ports)
    answering = {port for port, state in result.items() if state != "filtered"}
    assert answering == OPEN_PORTS, {p: result[p] for p in answering ^ OPEN_PORTS}
    assert {result[p] for p in OPEN_PORTS} == {"open"}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_udp_is_dropped_silently(host, address, ipv6, live_listener, family):
    target = address if family == "ipv4" else ipv6
    assert _answers_from_inside(host, target) == "answers"  # it echoes UDP on this address
    # From outside: no echo from the live listener, and no port-unreachable from a closed port
    # (dropped, not rejected: a scanner learns nothing).
    assert udp_probe(target, live_listener) == "silent"
    assert udp_probe(target, CLOSED_UDP) == "silent"
