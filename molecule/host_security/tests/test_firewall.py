"""nftables from the host side of the veth: only 22, 80 and 443 answer; SSH is rate-limited."""

import random
import socket
import subprocess
import time

import pytest
from port_scan import host_interface, scan

TABLE = "appliance_filter"
OPEN_PORTS = {22, 80, 443}
# Ports services of the appliance use internally, plus a fixed random sample above 1024.
SAMPLE_HIGH = sorted(
    {2222, 3000, 5000, 5432, 6379, 8000, 8080, 8443, 9090, 9100, 10250, 51820, 65535}
    | set(random.Random(20).sample(range(1025, 65536), 150))  # noqa: S311 (a fixed sample)
)


def test_ruleset_is_loaded_in_its_own_table(host):
    tables = host.check_output("sudo nft list tables").splitlines()
    assert f"table inet {TABLE}" in tables
    chain = host.check_output(f"sudo nft list chain inet {TABLE} input")
    assert "policy drop" in chain
    assert host.service("nftables").is_enabled


def test_ruleset_file_passes_nft_check(host):
    assert host.run("sudo nft -c -f /etc/nftables.conf").rc == 0


@pytest.mark.usefixtures("fresh_ssh_budget")
def test_tcp_scan_only_ssh_http_https_answer(host, address):
    ports = list(range(1, 1025)) + SAMPLE_HIGH
    result = scan(address, ports)
    answering = {port for port, state in result.items() if state != "filtered"}
    assert answering == OPEN_PORTS, {p: result[p] for p in answering ^ OPEN_PORTS}
    assert result[22] == "open"
    # Nothing listens on 80/443 yet: a RST proves the firewall accepted the SYN.
    assert result[80] == "closed"
    assert result[443] == "closed"
    drops = host.check_output(f"sudo nft list chain inet {TABLE} log_drop")
    assert "log prefix" in drops and "limit rate" in drops
    dropped = int(drops.split("counter packets ")[1].split()[0])
    assert dropped >= len(ports) - len(OPEN_PORTS)


@pytest.fixture
def web_listeners(host):
    for port in (80, 443):
        host.check_output(
            f"sudo systemd-run --unit=test-listen-{port} --collect "
            f"python3 -m http.server {port} --bind 0.0.0.0"
        )
    for port in (80, 443):
        for _ in range(50):
            if host.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            time.sleep(0.1)
    yield
    for port in (80, 443):
        host.run(f"sudo systemctl stop test-listen-{port}")


def test_listeners_on_80_and_443_are_reachable(web_listeners, address):
    result = scan(address, [80, 443, 8000, 8080])
    assert result == {80: "open", 443: "open", 8000: "filtered", 8080: "filtered"}


@pytest.fixture
def second_source(host, address):
    """A second address on the host's veth, so the SSH rate limit cannot hit the test's own SSH."""
    # Start from a fresh per-source budget, whatever earlier runs did.
    host.check_output(f"sudo nft flush set inet {TABLE} ssh_rate_v4")
    interface = host_interface(address)
    source = f"{address.rsplit('.', 1)[0]}.77"
    subprocess.run(["ip", "addr", "add", f"{source}/32", "dev", interface], check=True)
    try:
        yield source
    finally:
        subprocess.run(["ip", "addr", "del", f"{source}/32", "dev", interface], check=False)


def test_ssh_new_connections_are_rate_limited_per_source(second_source, address):
    """Burst 20, then 10/minute: about one new connection per 6 s gets through."""
    states = []
    started = time.monotonic()
    for _ in range(30):
        with socket.socket() as sock:
            sock.bind((second_source, 0))
            sock.settimeout(1.5)
            try:
                sock.connect((address, 22))
                states.append("open")
            except TimeoutError:
                states.append("filtered")
    elapsed = time.monotonic() - started
    assert states[:15] == ["open"] * 15, states
    after_burst = states[20:]
    refilled = 1 + int(elapsed / 6)
    assert after_burst.count("filtered") >= len(after_burst) - refilled, (states, elapsed)
    assert after_burst.count("filtered") >= 5, states


def test_stopping_nftables_leaves_other_tables(host):
    host.check_output("sudo nft add table inet someone_else")
    try:
        host.check_output("sudo systemctl stop nftables")
        tables = host.check_output("sudo nft list tables").splitlines()
        assert "table inet someone_else" in tables
        assert f"table inet {TABLE}" not in tables
        host.check_output("sudo systemctl start nftables")
        tables = host.check_output("sudo nft list tables").splitlines()
        assert "table inet someone_else" in tables
        assert f"table inet {TABLE}" in tables
    finally:
        host.run("sudo systemctl start nftables")
        host.run("sudo nft delete table inet someone_else")


def test_forwarding_is_dropped(host):
    chain = host.check_output(f"sudo nft list chain inet {TABLE} forward")
    assert "policy drop" in chain
    assert host.check_output("sysctl -n net.ipv4.ip_forward") == "0"
