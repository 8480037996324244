#!/usr/bin/env python3
"""Benchmark authenticated POST /predict: requests/s, p50, p99 at concurrency 1 and 32.

Starts a throw-away redis-server and the API (1 uvicorn worker, loopback), trains and
signs a 100-tree Iris model, creates a benchmark user whose rate limit is raised far
above the load, and drives the API with wrk (Debian package ``wrk``) through a Lua
script that adds the Authorization header. Everything stays on 127.0.0.1.

    .venv/bin/python benchmarks/service/bench_predict.py [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "service"))
sys.path.insert(0, str(REPO / "benchmarks"))

from service_support import Deployment, RedisServer, Server  # noqa: E402
from wrk_report import run_wrk  # noqa: E402

from ml_service.model.testing import make_keys, make_signed_model  # noqa: E402

BENCH_USER = "bench"
BENCH_PASSWORD = secrets.token_urlsafe(18)  # a throw-away user of a throw-away deployment
BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]})


def wrk_script(path: Path, token: str) -> Path:
    """POST /predict with the bearer token (wrk's Lua API: wrk.method, wrk.body, wrk.headers)."""
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per concurrency (median reported)"
    )
    parser.add_argument("--trees", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        print("needs the Debian packages wrk and redis-server", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="ml-bench-"))
    redis = RedisServer(root / "redis", secrets.token_urlsafe(24))
    server = None
    try:
        keys = make_keys(root / "model-keys")
        make_signed_model(root / "models", keys, n_estimators=args.trees)
        redis.start()
        limit = {"limit": 1_000_000, "period_seconds": 1}
        d = Deployment(
            root / "deployment",
            redis,
            root / "models",
            keys.trusted_dir,
            {"ML_SERVICE_USER_RATE_LIMITS": json.dumps({BENCH_USER: {"predict": limit}})},
        )
        d.add_user(BENCH_USER, "predictor", BENCH_PASSWORD)
        server = Server(d, workers=1)
        server.start()
        token = server.token(BENCH_USER, BENCH_PASSWORD)
        script = wrk_script(root / "predict.lua", token)
        run_wrk(server.url + "/predict", script, 32, 2)  # warm-up
        results: dict[str, dict[str, float]] = {}
        # /health/live is the reference: the cheapest route behind the same middleware.
        for label, route, target, connections in (
            ("predict c=1", "/predict", script, 1),
            ("predict c=32", "/predict", script, 32),
            ("health/live c=32", "/health/live", None, 32),
        ):
            runs = [
                run_wrk(server.url + route, target, connections, args.duration)
                for _ in range(args.rounds)
            ]
            results[label] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        info = httpx.get(server.url + "/model/info", headers={"Authorization": f"Bearer {token}"})
        print(
            f"\nPOST /predict with a bearer token, 1 uvicorn worker, loopback, wrk 4.1 "
            f"(median of {args.rounds} x {args.duration}s); model {args.trees} trees, "
            f"backend {info.json()['backend']}"
        )
        print(f"{'run':>18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for label, r in results.items():
            print(
                f"{label:>18} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['non_2xx']:>8.0f}"
            )
        print(json.dumps(results))
    finally:
        if server is not None:
            server.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
