#!/usr/bin/env python3
"""The serving benchmark (``make bench``): the service next to the bare Python HTTP stack.

In one run, rounds interleaved so a drifting machine load hits every server alike:

* ``reference``: a bare FastAPI endpoint answering a constant, on a fixed reference stack
  (FastAPI 0.115 / Starlette 0.46 / uvicorn 0.34, installed on first use into a throw-away
  virtualenv under ``.cache/bench/``, not into the repository's locks);
* ``same stack``: the same bare endpoint on the project's own locked FastAPI/uvicorn;
* ``project``: authenticated ``POST /predict`` of the service with everything on (ES256
  token, Redis rate limit and denylist, metrics, the audit record, the feedback store),
  one uvicorn worker, and the same with two workers.

Every server runs with the service's uvicorn options (uvloop, httptools, no access log).
Servers and the project's Redis are pinned to CPU 0 (Redis's work is part of a request's
cost), wrk to CPU 1; the two-worker server gets both CPUs (on a two-CPU machine it shares
one with wrk, so its figure is a lower bound). One Iris row per request, the same request
(body and headers) for every server. Reported: medians of the rounds with their ranges,
CPU time per request of the server's processes and of Redis, RSS, and the issue 19 goals as
same-run ratios. Each run is saved as JSON under ``artifacts/bench/`` and compared with the
previous one.

    .venv/bin/python benchmarks/service/bench_serving.py [--duration 5] [--rounds 3] [--soak 60]
        [--against REV]   # and the service of git revision REV, interleaved: a change in one run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "service"))
sys.path.insert(0, str(REPO / "benchmarks"))

from service_support import Deployment, RedisServer, Server, free_port, wait_port  # noqa: E402
from signed_models import make_keys, make_signed_model  # noqa: E402
from wrk_report import post_script, run_wrk  # noqa: E402

from ml_service.settings import Settings  # noqa: E402

BENCH_USER = "bench"
BENCH_PASSWORD = secrets.token_urlsafe(18)  # a throw-away user of a throw-away deployment
BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]})
REFERENCE_PINS = ["fastapi==0.115.14", "uvicorn==0.34.3", "uvloop==0.21.0", "httptools==0.6.4"]
REFERENCE_VENV = REPO / ".cache" / "bench" / "ref-fastapi-0.115"
RESULTS_DIR = REPO / "artifacts" / "bench"
SERVER_CPUS = {0}
LOAD_CPU = "1"
CONCURRENCIES = (1, 32)

# Issue 19's goals: (label, figure key, comparison, bound).
GOALS = (
    ("c=32 req/s >= 0.35 x reference", "rps_c32_ratio", ">=", 0.35),
    ("c=1 req/s >= 0.6 x reference", "rps_c1_ratio", ">=", 0.6),
    ("c=32 p99 <= 3 x reference p99", "p99_c32_ratio", "<=", 3.0),
    ("2 workers >= 1.8 x 1 worker (c=32)", "two_worker_ratio", ">=", 1.8),
    ("RSS <= 150 MiB per worker", "rss_mib", "<=", 150.0),
)


def reference_python() -> Path:
    """The reference stack's interpreter, installed on first use (pip's cache makes it quick)."""
    python = REFERENCE_VENV / "bin" / "python"
    marker = REFERENCE_VENV / ".pins"
    if not (python.exists() and marker.exists() and marker.read_text().split() == REFERENCE_PINS):
        shutil.rmtree(REFERENCE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *REFERENCE_PINS],
            check=True,
        )
        marker.write_text("\n".join(REFERENCE_PINS) + "\n")
    return python


def source_of(rev: str, root: Path) -> Path:
    """The ``ml_service`` package of git revision ``rev``, exported under ``root``."""
    target = root / "against"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "ml_service"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def versions(python: Path | str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('fastapi', 'starlette', 'uvicorn', 'uvloop', 'httptools', 'pydantic')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def group_pids(leader: int) -> list[int]:
    """The processes of a server's process group (uvicorn and, with workers, its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == leader:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime of all its threads
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Target:
    """One server under test: how to reach it, its processes, and what it measured."""

    name: str
    url: str
    leader: int
    workers: list[int]
    redis_pid: int | None = None
    concurrencies: tuple[int, ...] = CONCURRENCIES
    runs: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)


def pid_of(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid


def workers_of(server: Server) -> list[int]:
    return [int(pid) for pid in server.worker_ids]


class BareServer:
    def __init__(self, python: Path | str, root: Path) -> None:
        self.python = str(python)
        self.port = free_port()
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = (self.root / f"bare-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.python, "-m", "uvicorn", "bare_app:app",
                "--app-dir", str(Path(__file__).parent),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--no-server-header", "--log-level", "warning",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
        )  # fmt: skip
        wait_port(self.port, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)


def measure(target: Target, script: Path, connections: int, seconds: float) -> dict[str, float]:
    pids = group_pids(target.leader)
    before = cpu_seconds(pids)
    redis_before = cpu_seconds([target.redis_pid]) if target.redis_pid else 0.0
    result = run_wrk(target.url + "/predict", script, connections, seconds, cpus=LOAD_CPU)
    n = max(result["requests"], 1.0)
    result["cpu_us_per_request"] = (cpu_seconds(pids) - before) / n * 1e6
    if target.redis_pid:
        result["redis_cpu_us_per_request"] = (
            (cpu_seconds([target.redis_pid]) - redis_before) / n * 1e6
        )
    return result


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        key: {
            "median": statistics.median(r[key] for r in runs),
            "min": min(r[key] for r in runs),
            "max": max(r[key] for r in runs),
        }
        for key in runs[0]
    }


def figures(results: dict[str, Any]) -> dict[str, float]:
    def med(name: str, c: int, key: str) -> float:
        return float(results[name]["summary"][str(c)][key]["median"])

    return {
        "rps_c32_ratio": med("project", 32, "rps") / med("reference", 32, "rps"),
        "rps_c1_ratio": med("project", 1, "rps") / med("reference", 1, "rps"),
        "p99_c32_ratio": med("project", 32, "p99_ms") / med("reference", 32, "p99_ms"),
        "two_worker_ratio": med("project 2 workers", 32, "rps") / med("project", 32, "rps"),
        "rss_mib": max(results["project"]["rss_mib"] + results["project 2 workers"]["rss_mib"]),
        "same_stack_c32_ratio": med("same stack", 32, "rps") / med("reference", 32, "rps"),
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nPOST /predict, one Iris row, {report['rounds']} interleaved rounds x "
        f"{report['duration_s']} s per concurrency; servers and Redis on CPU 0, wrk on CPU "
        f"{LOAD_CPU}; load average before {report['load_average_before']}"
    )
    print(
        f"{'server':<19}{'c':>3}{'req/s':>8}{'range':>14}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p99 range':>15}{'max ms':>8}{'CPU µs/req':>11}{'Redis µs':>9}{'RSS MiB':>8}"
    )
    for name, result in report["results"].items():
        for c, s in result["summary"].items():
            redis = s.get("redis_cpu_us_per_request", {}).get("median")
            print(
                f"{name:<19}{c:>3}{s['rps']['median']:>8.0f}"
                f"{s['rps']['min']:>7.0f}-{s['rps']['max']:<6.0f}"
                f"{s['p50_ms']['median']:>8.2f}{s['p99_ms']['median']:>8.2f}"
                f"{s['p99_ms']['min']:>7.1f}-{s['p99_ms']['max']:<7.1f}"
                f"{s['max_ms']['median']:>8.1f}{s['cpu_us_per_request']['median']:>11.0f}"
                f"{'' if redis is None else f'{redis:.0f}':>9}"
                f"{max(result['rss_mib'], default=float('nan')):>8.0f}"
            )
        errors = sum(r["non_2xx"] + r["socket_errors"] for runs in result["runs"].values()
                     for r in runs)  # fmt: skip
        if errors:
            print(f"{'':<19}   !! {errors:.0f} non-2xx responses or socket errors")
    if "soak" in report:
        s = report["soak"]
        print(
            f"soak: project c=32 for {s['duration_s']} s: {s['rps']:.0f} req/s, p99 "
            f"{s['p99_ms']:.2f} ms, slowest {s['max_ms']:.1f} ms (goal: none over 50 ms)"
        )
    print("\nissue 19 goals (same-run ratios):")
    for label, key, op, bound in GOALS:
        value = report["figures"][key]
        ok = value >= bound if op == ">=" else value <= bound
        print(f"  {'met   ' if ok else 'MISSED'} {label:<38} {value:8.2f}")
    print(
        f"  (same stack's bare endpoint, c=32: "
        f"{report['figures']['same_stack_c32_ratio']:.2f} x reference)"
    )
    if "against" in report:
        f = report["figures"]
        print(
            f"\nthis tree against {report['against']} in the same run: c=1 "
            f"{f['against_c1_ratio']:.2f} x, c=32 {f['against_c32_ratio']:.2f} x"
        )


def compare_with_previous(report: dict[str, Any], previous: Path | None) -> None:
    if previous is None:
        return
    old = json.loads(previous.read_text())
    print(f"\nagainst the previous run ({previous.name}):")
    for key, value in report["figures"].items():
        before = old.get("figures", {}).get(key)
        if isinstance(before, int | float) and before:
            print(
                f"  {key:<22} {before:8.2f} -> {value:8.2f} ({(value / before - 1) * 100:+.0f} %)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument(
        "--soak", type=int, default=0, help="then the project alone at c=32 for this long"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also the service of this git revision, interleaved (a change measured in one run)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        print("needs the Debian packages wrk and redis-server", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs (servers on one, wrk on the other)", file=sys.stderr)
        return 2
    ref_python = reference_python()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    root = Path(tempfile.mkdtemp(prefix="ml-bench-"))
    redis = RedisServer(root / "redis", secrets.token_urlsafe(24))
    stoppers: list[Callable[[], None]] = []
    everything = os.sched_getaffinity(0)
    try:
        keys = make_keys(root / "model-keys")
        make_signed_model(root / "models", keys, n_estimators=args.trees)
        defaults = Settings.model_fields
        # Production intervals, not the tests' short ones (service_support's Deployment).
        env = {
            "ML_SERVICE_MODEL_REFRESH_SECONDS": str(defaults["model_refresh_seconds"].default),
            "ML_SERVICE_REDIS_PROBE_SECONDS": str(defaults["redis_probe_seconds"].default),
            "ML_SERVICE_USER_RATE_LIMITS": json.dumps(
                {BENCH_USER: {"predict": {"limit": 1_000_000, "period_seconds": 1}}}
            ),
        }
        # Children inherit the affinity: everything started from here on runs on CPU 0.
        os.sched_setaffinity(0, SERVER_CPUS)
        redis.start()
        stoppers.append(redis.stop)
        d = Deployment(root / "deployment", redis, root / "models", keys.trusted_dir, env)
        d.add_user(BENCH_USER, "predictor", BENCH_PASSWORD)
        project = Server(d, workers=1)
        project.start()
        stoppers.append(project.stop)
        earlier, name = None, ""
        if args.against:
            earlier = Server(d, workers=1, source=source_of(args.against, root))
            earlier.start()
            stoppers.append(earlier.stop)
        bare_ref, bare_same = BareServer(ref_python, root), BareServer(sys.executable, root)
        for bare in (bare_ref, bare_same):
            bare.start()
            stoppers.append(bare.stop)
        os.sched_setaffinity(0, everything)
        two = Server(d, workers=2)
        two.start()
        stoppers.append(two.stop)
        os.sched_setaffinity(0, {int(LOAD_CPU)})

        token = project.token(BENCH_USER, BENCH_PASSWORD)
        script = post_script(root / "predict.lua", BODY, token)
        redis_pid = redis.proc.pid if redis.proc is not None else None
        targets = [
            Target("reference", bare_ref.url, bare_ref.pid, [bare_ref.pid]),
            Target("same stack", bare_same.url, bare_same.pid, [bare_same.pid]),
            Target("project", project.url, pid_of(project), workers_of(project), redis_pid),
            Target("project 2 workers", two.url, pid_of(two), workers_of(two), redis_pid, (32,)),
        ]
        if earlier is not None:
            name = f"project at {args.against}"
            pids = pid_of(earlier), workers_of(earlier)
            targets.append(Target(name, earlier.url, *pids, redis_pid))
        for t in targets:  # warm-up: first requests, caches, lazy imports
            r = httpx.post(t.url + "/predict", content=BODY,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 200, (t.name, r.status_code, r.text)
            run_wrk(t.url + "/predict", script, 32, 2, cpus=LOAD_CPU)
        for _ in range(args.rounds):
            for t in targets:
                for c in t.concurrencies:
                    t.runs.setdefault(c, []).append(measure(t, script, c, args.duration))
                t.rss.append(max(rss_mib(pid) for pid in t.workers))
        report: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "trees": args.trees,
            "stacks": {"reference": versions(ref_python), "project": versions(sys.executable)},
            "results": {
                t.name: {
                    "runs": {str(c): runs for c, runs in t.runs.items()},
                    "summary": {str(c): summary(runs) for c, runs in t.runs.items()},
                    "rss_mib": t.rss,
                }
                for t in targets
            },
        }
        report["figures"] = figures(report["results"])
        if earlier is not None:
            report["against"] = args.against
            for c in CONCURRENCIES:
                report["figures"][f"against_c{c}_ratio"] = (
                    report["results"]["project"]["summary"][str(c)]["rps"]["median"]
                    / report["results"][name]["summary"][str(c)]["rps"]["median"]
                )
        if args.soak:
            soak = measure(targets[2], script, 32, args.soak)
            report["soak"] = {"duration_s": args.soak, **soak}
            report["figures"]["soak_max_ms"] = soak["max_ms"]
    finally:
        os.sched_setaffinity(0, everything)
        for stop in reversed(stoppers):
            stop()
        shutil.rmtree(root, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = sorted(args.out.glob("serving-*.json"))
    path = args.out / f"serving-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    compare_with_previous(report, earlier[-1] if earlier else None)
    print(f"\nsaved {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
