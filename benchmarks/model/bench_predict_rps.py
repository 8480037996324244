#!/usr/bin/env python3
"""Authenticated POST /predict throughput, one uvicorn worker: scikit-learn vs the fast path.

    .venv/bin/python benchmarks/model/bench_predict_rps.py [--duration 10] [--rounds 3]

Starts redis-server and `python -m ml_service serve` (1 worker, 100-tree model) twice:
ML_MODEL_FAST_PATH=0 ("before": scikit-learn) and =1 ("after"), and drives each with
wrk (Debian package `wrk`) on loopback at concurrency 32 (2 threads) and 1, rounds
alternating between the two servers. Reports the median round: requests/s, p50, p99.
The load generator shares the machine's cores with the server: compare figures
from the same run only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "workspace"))
sys.path.insert(0, str(REPO / "benchmarks"))

from smoke_stack import PASSWORD, USER, Stack  # noqa: E402
from wrk_report import run_wrk  # noqa: E402

LUA = """
wrk.method = "POST"
wrk.body = '{"features": [6.1, 2.8, 4.7, 1.2]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def token(port: int) -> str:
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/token", form, timeout=10) as r:
        return str(json.load(r)["access_token"])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trees", type=int, default=100)
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        print("needs wrk and redis-server (apt-get install wrk redis-server)", file=sys.stderr)
        return 2
    unlimited = json.dumps({USER: {"predict": {"limit": 1_000_000, "period_seconds": 1}}})
    with tempfile.TemporaryDirectory() as tmp:
        stacks = {}
        try:
            for label, fast in (("sklearn", "0"), ("numpy-forest", "1")):
                stack = Stack(
                    Path(tmp) / label,
                    tls=False,
                    n_estimators=args.trees,
                    extra_env={
                        "ML_MODEL_FAST_PATH": fast,
                        "ML_SERVICE_USER_RATE_LIMITS": unlimited,
                        "ML_SERVICE_LOG_LEVEL": "warning",
                    },
                )
                stack.root.mkdir()
                stacks[label] = stack
                stack.start()
            results: dict[str, dict[int, list[dict[str, float]]]] = {
                k: {32: [], 1: []} for k in stacks
            }
            for stack in stacks.values():
                script = stack.root / "predict.lua"
                script.write_text(LUA % token(stack.http_port))
                run_wrk(f"http://127.0.0.1:{stack.http_port}/predict", script, 32, 2)  # warm-up
            for _ in range(args.rounds):
                for label, stack in stacks.items():
                    for conns in (32, 1):
                        results[label][conns].append(
                            run_wrk(
                                f"http://127.0.0.1:{stack.http_port}/predict",
                                stack.root / "predict.lua",
                                conns,
                                args.duration,
                            )
                        )
        finally:
            for stack in stacks.values():
                stack.stop()
    print(
        f"authenticated POST /predict, 1 worker, {args.trees} trees, wrk {args.duration}s x "
        f"{args.rounds} rounds (median round by req/s)"
    )
    print(f"{'backend':<14}{'conc':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
    for label in results:
        for conns in (1, 32):
            rounds = sorted(results[label][conns], key=lambda r: r["rps"])
            mid = rounds[len(rounds) // 2]
            non2xx = sum(r["non_2xx"] for r in rounds)
            print(
                f"{label:<14}{conns:>6}{mid['rps']:>10.0f}{mid['p50_ms']:>10.2f}"
                f"{mid['p99_ms']:>10.2f}{non2xx:>9.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
