#!/usr/bin/env python3
"""The API through Traefik with TLS on a running appliance (``make bench-edge``; root).

What issue 19 asks to report for a ``make up`` appliance (its default two API workers):
requests per second and p99 at concurrency 32 for ``POST /predict`` and for the Open
Inference Protocol's ``POST /v2/models/iris/infer``, and Traefik's share of the time.

How:

* wrk runs in the machine's network namespace (``nsenter -n``) with a private ``/etc/hosts``
  naming ``api.localhost`` 127.0.0.1 (``unshare -m``: the controller's file is untouched), so
  it reaches port 443 the way a client on the appliance does, with the SNI Traefik's strict
  TLS options ask for. wrk shares the machine's CPUs (it is not pinned).
* Its requests are a predictor's (``alice`` of the local inventory). The appliance's limits
  would answer most of them 429, so for the run a quadlet drop-in raises that user's predict
  limit; the drop-in is removed and the API restarted as configured before the script exits,
  also when a run fails.
* Each service's CPU time comes from its unit's cgroup (``cpu.stat`` ``usage_usec`` of
  ``traefik.service``, ``ml-api.service`` and ``redis.service`` in the service account's
  systemd), read before and after every run: CPU per request of each, and Traefik's share of
  the three.

    sudo .venv/bin/python benchmarks/service/bench_edge.py [--machine mol-appliance]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from wrk_report import parse_wrk, post_script  # noqa: E402

MACHINE_SCRIPT = REPO / "scripts" / "nspawn-machine.sh"
RESULTS_DIR = REPO / "artifacts" / "bench"
USER = "alice"
SERVICES = ("traefik", "ml-api", "redis")
DROP_IN = "ml-api.container.d/90-bench-edge.conf"
ROW = [5.1, 3.5, 1.4, 0.2]
ROUTES = {
    "POST /predict": ("/predict", {"features": ROW}),
    "POST /v2/models/iris/infer": (
        "/v2/models/iris/infer",
        {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": ROW}]},
    ),
}


class Machine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.leader = self._script("leader").strip()

    def _script(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [str(MACHINE_SCRIPT), args[0], self.name, *args[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} on {self.name}: {out.stderr.strip()}")
        return out.stdout

    def sh(self, command: str, check: bool = True) -> str:
        """A root shell command inside the machine."""
        return self._script("shell", "/bin/sh", "-c", command, check=check)

    def in_network(self, command: list[str], hosts: Path) -> str:
        """``command`` from the controller's files in the machine's network, with ``hosts``."""
        inner = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {shlex.join(command)}"
        out = subprocess.run(
            ["nsenter", "-t", self.leader, "-n", "unshare", "-m", "sh", "-c", inner],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout


class Appliance:
    """The service account's systemd inside the machine."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        entry = machine.sh("getent passwd appliance").strip().split(":")
        self.uid, self.home = entry[2], entry[5]
        self.user_systemd = (
            f"runuser -u appliance -- env XDG_RUNTIME_DIR=/run/user/{self.uid} systemctl --user"
        )

    def cpu_usec(self) -> dict[str, int]:
        base = f"/sys/fs/cgroup/user.slice/user-{self.uid}.slice/user@{self.uid}.service/app.slice"
        paths = " ".join(f"{base}/{s}.service/cpu.stat" for s in SERVICES)
        out = self.m.sh(f"for f in {paths}; do sed -n 's/^usage_usec //p' $f; done")
        values = [int(v) for v in out.split()]
        if len(values) != len(SERVICES):
            raise RuntimeError(f"cpu.stat of {SERVICES}: {out!r}")
        return dict(zip(SERVICES, values, strict=True))

    def raise_limit(self, user: str) -> None:
        limits = json.dumps(
            {user: {"predict": {"limit": 1_000_000, "period_seconds": 1}}}, separators=(",", ":")
        )
        # Single quotes: systemd's unquoting keeps the JSON's double quotes.
        conf = f"[Container]\nEnvironment='ML_SERVICE_USER_RATE_LIMITS={limits}'\n"
        path = f"{self.home}/.config/containers/systemd/{DROP_IN}"
        self.m.sh(
            f"install -d -o appliance -g appliance {shlex.quote(os.path.dirname(path))} && "
            f"printf %s {shlex.quote(conf)} > {shlex.quote(path)} && "
            f"chown appliance: {shlex.quote(path)}"
        )
        self.restart_api()

    def restore(self) -> None:
        path = f"{self.home}/.config/containers/systemd/{DROP_IN}"
        self.m.sh(f"rm -f {shlex.quote(path)}; rmdir {shlex.quote(os.path.dirname(path))}", False)
        self.restart_api()

    def restart_api(self) -> None:
        # Notify=healthy: the restart returns once the API answers its health check.
        self.m.sh(f"{self.user_systemd} daemon-reload && {self.user_systemd} restart ml-api")


def token(machine: Machine, hosts: Path, ca: Path, password: str) -> str:
    out = machine.in_network(
        [
            "curl", "-sS", "--fail-with-body", "--cacert", str(ca),
            "--data-urlencode", f"username={USER}", "--data-urlencode", f"password={password}",
            "https://api.localhost/token",
        ],
        hosts,
    )  # fmt: skip
    return str(json.loads(out)["access_token"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--machine", default="mol-appliance")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (nsenter into the test machine)", file=sys.stderr)
        return 2
    machine = Machine(args.machine)
    appliance = Appliance(machine)
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost api.localhost\n")
    ca = work / "ca.crt"
    ca.write_text(machine.sh("cat /etc/appliance/ca.crt"))
    password = machine.sh(f"cat /etc/appliance/secrets/ml-api-users/{USER}").strip()
    workers = machine.sh(
        f"sed -n 's/^Environment=ML_SERVICE_WORKERS=//p' "
        f"{appliance.home}/.config/containers/systemd/ml-api.container"
    ).strip()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ROUTES}
    try:
        appliance.raise_limit(USER)
        bearer = token(machine, hosts, ca, password)
        scripts = {
            name: post_script(work / f"{i}.lua", json.dumps(body), bearer)
            for i, (name, (_, body)) in enumerate(ROUTES.items())
        }
        for name, (route, _) in ROUTES.items():  # warm-up
            machine.in_network(
                ["wrk", "-t2", "-c8", "-d2s", "-s", str(scripts[name]),
                 f"https://api.localhost{route}"], hosts,
            )  # fmt: skip
        for _ in range(args.rounds):
            for name, (route, _) in ROUTES.items():
                before = appliance.cpu_usec()
                out = machine.in_network(
                    ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                     "-s", str(scripts[name]), f"https://api.localhost{route}"], hosts,
                )  # fmt: skip
                after = appliance.cpu_usec()
                run = parse_wrk(out, args.duration)
                n = max(run["requests"], 1.0)
                for s in SERVICES:
                    run[f"{s}_cpu_us"] = (after[s] - before[s]) / n
                total = sum(run[f"{s}_cpu_us"] for s in SERVICES)
                run["traefik_share"] = run["traefik_cpu_us"] / total if total else float("nan")
                results[name].append(run)
    finally:
        appliance.restore()
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": args.machine,
        "api_workers": workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"edge-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"\nthrough Traefik (TLS, HTTP/1.1 keep-alive) on {args.machine}, {workers} API "
        f"workers, c={args.connections}, {args.rounds} rounds x {args.duration} s (medians)"
    )
    print(
        f"{'route':<28}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'Traefik µs':>11}{'API µs':>8}{'Redis µs':>9}{'Traefik share':>14}{'errors':>7}"
    )
    for name, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        errors = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
        print(
            f"{name:<28}{med('rps'):>8.0f}{med('p50_ms'):>8.2f}{med('p99_ms'):>8.2f}"
            f"{med('max_ms'):>8.1f}{med('traefik_cpu_us'):>11.0f}{med('ml-api_cpu_us'):>8.0f}"
            f"{med('redis_cpu_us'):>9.0f}{med('traefik_share') * 100:>13.0f}%{errors:>7.0f}"
        )
    print(f"\nsaved {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
