"""Networks by need, tried from inside every container: exactly the pairs of the reachability
table in docs/isolation.md connect, every other pair is refused on every address and port.

The table is read from the docs, so the docs and the test cannot drift apart. Each container
tries every other one on each of its addresses (all its networks) and each port the docs list
for it, with bash's /dev/tcp (every image has bash and coreutils' timeout): the allowed pairs
are also the probe's control, since a probe that could not connect at all fails them.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from on_host import AS_SERVICE

DOCS = Path(__file__).resolve().parents[3] / "docs" / "isolation.md"
CONTAINERS = ("traefik", "ml-api", "redis", "prometheus", "alertmanager", "code-server")


def _tables() -> tuple[set[tuple[str, str, int]], dict[str, list[int]]]:
    text = DOCS.read_text()
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
    ]
    allowed = {
        (r[0], r[1], int(r[2]))
        for r in rows
        if len(r) == 4 and r[0] in CONTAINERS and r[2].isdigit()
    }
    ports = {
        r[0]: [int(p) for p in r[1].split(", ")]
        for r in rows
        if len(r) == 2 and r[0] in CONTAINERS and re.fullmatch(r"[0-9, ]+", r[1])
    }
    return allowed, ports


ALLOWED, PORTS = _tables()


def test_the_docs_tables_are_complete() -> None:
    assert set(PORTS) == set(CONTAINERS), PORTS
    assert len(ALLOWED) >= 10, ALLOWED
    for source, target, port in ALLOWED:
        assert port in PORTS[target], f"{source} -> {target}:{port}: not a port tried"


@pytest.fixture(scope="module")
def addresses(host) -> dict[str, list[str]]:
    """Every container's address on each of its networks."""
    template = "{{json .NetworkSettings.Networks}}"
    found = {}
    for name in CONTAINERS:
        inspect = f"podman inspect --format {shlex.quote(template)} {name}"
        out = host.check_output(AS_SERVICE + inspect)
        found[name] = sorted(n["IPAddress"] for n in json.loads(out).values() if n["IPAddress"])
        assert found[name], f"{name} has no address"
    return found


def _probe_script(targets: list[tuple[str, str, int]]) -> str:
    lines = [
        f"(timeout 2 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null "
        f"&& echo '{name} {ip} {port} open' || echo '{name} {ip} {port} closed') &"
        for name, ip, port in targets
    ]
    return "\n".join([*lines, "wait"])


@pytest.mark.parametrize("source", CONTAINERS)
def test_a_container_reaches_exactly_its_peers(host, addresses, source) -> None:
    targets = [
        (name, ip, port)
        for name in CONTAINERS
        if name != source
        for ip in addresses[name]
        for port in PORTS[name]
    ]
    script = _probe_script(targets)
    result = host.run(AS_SERVICE + f"podman exec {source} bash -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    opened = set()
    seen = set()
    for line in result.stdout.splitlines():
        name, ip, port, state = line.split()
        seen.add((name, ip, int(port)))
        if state == "open":
            opened.add((name, int(port)))
    assert seen == set(targets), "some probes did not report"
    expected = {(target, port) for s, target, port in ALLOWED if s == source}
    assert opened == expected, (
        f"from {source}: connects but not in the table {sorted(opened - expected)}; "
        f"in the table but refused {sorted(expected - opened)}"
    )


def test_the_ide_reaches_the_api_only_through_traefik_and_is_audited_as_itself(host, addresses):
    """From inside the IDE: https://api.localhost (Traefik's ide entrypoint, the appliance CA)
    answers; a forged X-Forwarded-For is dropped, the audit log has the IDE's own address."""
    client = r"""
import json, urllib.request
req = urllib.request.Request("https://api.localhost/token", method="POST",
    data=b"username=ide-probe&password=not-it",
    headers={"X-Forwarded-For": "192.0.2.66", "Content-Type": "application/x-www-form-urlencoded"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": json.loads(exc.read())}))
"""
    before = int(host.check_output("wc -l < /var/log/appliance/ml-api/audit.log").strip())
    out = host.check_output(
        AS_SERVICE + f"podman exec code-server python3 -c {shlex.quote(client)}"
    )
    assert json.loads(out)["status"] == 401, out
    text = host.check_output(f"tail -n +{before + 1} /var/log/appliance/ml-api/audit.log")
    records = [json.loads(line) for line in text.splitlines()]
    tokens = [r for r in records if r.get("route") == "/token"]
    assert [r["client_ip"] for r in tokens] == addresses["code-server"], tokens


def test_the_api_believes_forwarded_for_from_traefik_alone(host, addresses):
    env = host.check_output(
        AS_SERVICE + "podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' ml-api"
    )
    key = "ML_SERVICE_FORWARDED_ALLOW_IPS="
    trusted = [line.removeprefix(key) for line in env.splitlines() if line.startswith(key)]
    assert trusted == ["10.89.10.2"], trusted
    assert "10.89.10.2" in addresses["traefik"]
