"""Port probes from the controller, where a client on the network stands: a TCP connect scan
that tells open, closed (a RST: the firewall let the SYN through) and filtered (no answer) apart,
and a UDP probe that tells an answer, an ICMP port-unreachable and silence apart. IPv4 or IPv6."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess

TIMEOUT = 2.0


async def _probe(address: str, port: int, limit: asyncio.Semaphore) -> tuple[int, str]:
    async with limit:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), TIMEOUT)
        except ConnectionRefusedError:
            return port, "closed"
        except TimeoutError:
            return port, "filtered"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return port, "open"


def scan(address: str, ports: list[int]) -> dict[int, str]:
    """Each port's state: "open", "closed" or "filtered"."""

    async def run() -> dict[int, str]:
        limit = asyncio.Semaphore(256)
        return dict(await asyncio.gather(*(_probe(address, p, limit) for p in ports)))

    return asyncio.run(run())


def udp_probe(address: str, port: int, payload: bytes = b"probe") -> str:
    """ "answered", "unreachable" (an ICMP port-unreachable came back) or "silent"."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        # Connected, so the kernel hands an ICMP error to this socket as ConnectionRefusedError.
        sock.connect((address, port))
        sock.send(payload)
        try:
            sock.recv(512)
        except ConnectionRefusedError:
            return "unreachable"
        except TimeoutError:
            return "silent"
        return "answered"


def host_interface(address: str) -> str:
    """The controller's interface toward a test machine's ADDRESS: the one holding the host side
    (.1) of its /24."""
    host_ip = f"{address.rsplit('.', 1)[0]}.1"
    links = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "to", f"{host_ip}/32"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert links, f"no host interface has {host_ip}"
    return links[1]
