#!/usr/bin/env python3
"""Open Inference Protocol infer throughput: gRPC vs REST, side by side, in one run.

Starts a throw-away redis-server and the API (1 uvicorn worker, its gRPC listener, loopback
only), trains and signs a 100-tree Iris model, creates a benchmark user whose rate limit is
far above the load, and drives ``infer`` (one row, FP64) at a fixed concurrency with the
real clients' asyncio flavours: ``tritonclient.grpc.aio`` and ``tritonclient.http.aio``
(REST with binary tensor data, as tritonclient sends by default, and with JSON data). The
server is pinned to CPU 0 and this load generator to CPU 1 when the machine has two CPUs.
Rounds alternate the protocols, so a drifting machine load hits both alike; medians of the
rounds are reported. Each run is bounded by ``--duration`` seconds.

    .venv/bin/python benchmarks/service/bench_oip.py [--duration 10] [--rounds 3] [-c 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tgrpc
import tritonclient.http.aio as thttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "service"))

from service_support import Deployment, RedisServer, Server, free_port  # noqa: E402
from signed_models import make_keys, make_signed_model  # noqa: E402

BENCH_USER = "bench"
BENCH_PASSWORD = secrets.token_urlsafe(18)  # a throw-away user of a throw-away deployment
ROW = np.array([[5.1, 3.5, 1.4, 0.2]])


def _pin(server: Server) -> str:
    if (os.cpu_count() or 1) < 2 or server.proc is None:
        return "not pinned (one CPU)"
    # The server's process group: uvicorn and (with workers) its children.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getpgid(int(pid)) == server.proc.pid:
                    os.sched_setaffinity(int(pid), {0})
            except (ProcessLookupError, PermissionError):
                pass
    os.sched_setaffinity(0, {1})
    return "server on CPU 0, load generator on CPU 1"


async def _drive(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    first_error = ""
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, first_error
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    if first_error:
        print(f"{errors} failed calls, the first: {first_error}", file=sys.stderr)
    return {
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "errors": float(errors),
    }


async def _bench(
    http_url: str, grpc_url: str, token: str, concurrency: int, seconds: float, rounds: int
) -> dict[str, dict[str, float]]:
    headers = {"Authorization": f"Bearer {token}"}
    metadata = {"authorization": f"Bearer {token}"}
    http = thttp.InferenceServerClient(http_url, conn_limit=concurrency)
    grpc = tgrpc.InferenceServerClient(grpc_url)

    def http_call(binary: bool) -> Callable[[], Awaitable[object]]:
        def call() -> Awaitable[object]:
            tensor = thttp.InferInput("features", [1, 4], "FP64")
            tensor.set_data_from_numpy(ROW, binary_data=binary)
            outputs = [thttp.InferRequestedOutput("probabilities", binary_data=binary)]
            return http.infer("iris", [tensor], outputs=outputs, headers=dict(headers))

        return call

    def grpc_call() -> Awaitable[object]:
        tensor = tgrpc.InferInput("features", [1, 4], "FP64")
        tensor.set_data_from_numpy(ROW)
        outputs = [tgrpc.InferRequestedOutput("probabilities")]
        return grpc.infer("iris", [tensor], outputs=outputs, headers=metadata)

    plans = {
        "gRPC": grpc_call,
        "REST binary": http_call(True),
        "REST JSON": http_call(False),
    }
    runs: dict[str, list[dict]] = {label: [] for label in plans}
    try:
        for call in plans.values():  # warm-up: connections, caches
            await _drive(call, concurrency, 1.0)
        for _ in range(rounds):
            for label, call in plans.items():
                runs[label].append(await _drive(call, concurrency, seconds))
    finally:
        await http.close()
        await grpc.close()
    return {
        label: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for label, results in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per run (bound)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per protocol (median)")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--trees", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("needs the Debian package redis-server", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="ml-bench-oip-"))
    redis = RedisServer(root / "redis", secrets.token_urlsafe(24))
    server = None
    grpc_port = free_port()
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
            {
                "ML_SERVICE_USER_RATE_LIMITS": json.dumps({BENCH_USER: {"predict": limit}}),
                "ML_SERVICE_GRPC_PORT": str(grpc_port),
                "ML_SERVICE_LOG_LEVEL": "warning",
            },
        )
        d.add_user(BENCH_USER, "predictor", BENCH_PASSWORD)
        server = Server(d, workers=1)
        server.start(timeout=120)
        token = server.token(BENCH_USER, BENCH_PASSWORD)
        pinning = _pin(server)
        results = asyncio.run(
            _bench(
                server.url.removeprefix("http://"),
                f"127.0.0.1:{grpc_port}",
                token,
                args.concurrency,
                args.duration,
                args.rounds,
            )
        )
        print(
            f"\nOIP infer (1 row FP64, output probabilities), 1 uvicorn worker, loopback, "
            f"concurrency {args.concurrency}, tritonclient 2.73 asyncio clients; "
            f"median of {args.rounds} x {args.duration:g}s, rounds interleaved; {pinning}"
        )
        print(f"{'protocol':>12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for label, r in results.items():
            print(
                f"{label:>12} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['errors']:>7.0f}"
            )
        print(json.dumps(results))
    finally:
        if server is not None:
            server.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
