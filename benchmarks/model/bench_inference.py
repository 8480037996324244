#!/usr/bin/env python3
"""Single-row and batch latency: scikit-learn vs the numpy fast path, through the registry.

    .venv/bin/python benchmarks/model/bench_inference.py [--trees 100] [--rounds 3] [--json]

Trains a model on Iris, writes a signed artifact into a temp dir, loads it twice
through ModelRegistry (fast path on and off) and times ``predict_proba``. Reports
p50/p99/mean per call (time.perf_counter_ns around each call) and load time.
A benchmark, not a test: figures are machine- and noise-dependent.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from signed_models import make_keys, make_signed_model

from ml_service.model import ModelRegistry


def time_calls(fn, X, n: int) -> list[float]:
    """Microseconds per call."""
    out = []
    gc.disable()
    try:
        for i in range(n):
            row = X[i % len(X)]
            t0 = time.perf_counter_ns()
            fn(row)
            out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return out


def summary(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {
        "p50_us": float(np.percentile(arr, 50)),
        "p99_us": float(np.percentile(arr, 99)),
        "mean_us": float(arr.mean()),
        "n": len(samples),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="repeat and report the median round")
    ap.add_argument("--sklearn-calls", type=int, default=300)
    ap.add_argument("--fast-calls", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = make_keys(root / "keys")
        make_signed_model(root / "models", keys, n_estimators=args.trees)
        loads = {}
        models = {}
        for backend, allow in (("sklearn", False), ("numpy-forest", True)):
            reg = ModelRegistry(root / "models", "iris", keys.trusted_dir, allow_fast=allow)
            t0 = time.perf_counter()
            models[backend] = reg.load()
            loads[backend] = (time.perf_counter() - t0) * 1000
            assert models[backend].backend == backend

        rng = np.random.default_rng(0)
        rows = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(1000, 4))
        singles = [r[None, :] for r in rows]
        batch = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(1000, 4))

        results: dict[str, dict] = {}
        for backend, model in models.items():
            n = args.sklearn_calls if backend == "sklearn" else args.fast_calls
            fn = model.predict_proba
            time_calls(fn, singles, min(n, 200))  # warm-up
            rounds = [summary(time_calls(fn, singles, n)) for _ in range(args.rounds)]
            rounds.sort(key=lambda r: r["p50_us"])
            single = rounds[len(rounds) // 2]
            batch_ms = []
            for _ in range(max(3, args.rounds)):
                t0 = time.perf_counter()
                fn(batch)
                batch_ms.append((time.perf_counter() - t0) * 1000)
            results[backend] = {
                "single_row": single,
                "batch_1000_ms": statistics.median(batch_ms),
                "load_ms": loads[backend],
            }

    fast, slow = results["numpy-forest"], results["sklearn"]
    speedup = slow["single_row"]["p50_us"] / fast["single_row"]["p50_us"]
    if args.json:
        print(
            json.dumps({"trees": args.trees, "results": results, "speedup_p50": speedup}, indent=2)
        )
        return 0
    print(f"RandomForest, {args.trees} trees, Iris; median of {args.rounds} rounds")
    header = ("backend", "p50 µs", "p99 µs", "mean µs", "1000 rows ms", "load ms")
    print(
        f"{header[0]:<14}"
        + "".join(f"{h:>10}" for h in header[1:4])
        + f"{header[4]:>14}{header[5]:>10}"
    )
    for backend in ("sklearn", "numpy-forest"):
        r = results[backend]
        s = r["single_row"]
        print(
            f"{backend:<14}{s['p50_us']:>10.1f}{s['p99_us']:>10.1f}{s['mean_us']:>10.1f}"
            f"{r['batch_1000_ms']:>14.2f}{r['load_ms']:>10.1f}"
        )
    print(f"single-row speed-up at p50: {speedup:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
