"""From verified model bytes to a served backend, with scikit-learn kept out of the worker.

Unpickling a forest imports scikit-learn, scipy and joblib: about 90 MiB that a worker
would keep for its whole life although the fast path never calls them
(docs/performance.md). So a short-lived child process unpickles the verified bytes,
flattens the forest, checks it against scikit-learn, and sends back only numpy arrays in
an ``.npz`` read with ``allow_pickle=False``: the worker itself unpickles nothing. The
child then exits and takes scikit-learn's memory with it.

Only models without a fast path (or one that failed its self-check) are unpickled in the
worker, as before. If the child cannot run at all (no fork allowed, killed, timed out),
the worker converts in-process: slower to start and larger, never refused for it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fast_forest import FastForest, UnsupportedModel

log = logging.getLogger("ml_service.model")

EQUIVALENCE_TOLERANCE = 1e-6
SELF_CHECK_ROWS = 512
CHILD_TIMEOUT = 300.0  # seconds; a large forest on a loaded two-core machine

FAST = "fast"  # a checked FastForest
NO_FAST_PATH = "no-fast-path"  # a valid model of a type the fast path does not handle
MISMATCH = "mismatch"  # the fast path disagreed with scikit-learn: not used
INVALID = "invalid"  # unpickling or the model's own checks failed: the version is refused


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str = ""
    forest: FastForest | None = None


def unpickle_checked(model_bytes: bytes, n_features: int, n_classes: int) -> Any:
    """The estimator in ``model_bytes`` after the checks every backend needs; ``ValueError``
    naming the problem otherwise. Only ever called on verified bytes."""
    import joblib  # imported here: a worker serving the fast path never loads it

    try:
        estimator = joblib.load(io.BytesIO(model_bytes))
    except Exception as exc:
        raise ValueError(f"unpickling failed: {exc}") from None
    try:
        if not hasattr(estimator, "predict_proba"):
            raise ValueError(f"{type(estimator).__name__} has no predict_proba")
        if int(estimator.n_features_in_) != n_features:
            raise ValueError("n_features_in_ differs from metadata feature_names")
        if len(estimator.classes_) != n_classes:
            raise ValueError("classes_ differ in number from metadata class_names")
    except (AttributeError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if hasattr(estimator, "n_jobs"):
        # Thread pools per request cost more than they save at these sizes.
        estimator.n_jobs = None
    return estimator


def checked_forest(estimator: Any, md: dict[str, Any]) -> Outcome:
    """Flatten ``estimator`` and compare it with scikit-learn on in-range rows, single
    rows and rows with NaN; any difference disables the fast path."""
    try:
        forest = FastForest.from_estimator(estimator)
    except UnsupportedModel as exc:
        return Outcome(NO_FAST_PATH, str(exc))
    rng = np.random.default_rng(0)
    low, high = feature_bounds(md, forest.n_features)
    X = rng.uniform(low, high, size=(SELF_CHECK_ROWS, forest.n_features))
    diff = _max_difference(estimator, forest, X)
    X[rng.random(X.shape) < 0.25] = np.nan
    try:
        diff = max(diff, _max_difference(estimator, forest, X))
    except ValueError:  # scikit-learn refuses NaN for this model: so does the fast path
        forest = forest.with_nan(False)
    if not diff <= EQUIVALENCE_TOLERANCE:
        return Outcome(MISMATCH, f"fast path differs from scikit-learn by {diff:g}")
    return Outcome(FAST, forest=forest)


def _max_difference(estimator: Any, forest: FastForest, X: np.ndarray) -> float:
    expected = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    got = np.vstack([forest.predict_proba(X), forest.predict_proba(X[:1])])
    return float(np.abs(np.vstack([expected, expected[:1]]) - got).max())


def feature_bounds(md: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
    stats = md.get("feature_stats") or {}
    low, high = [], []
    for f in md.get("feature_names", [])[:n]:
        s = stats.get(f, {})
        lo, hi = s.get("min"), s.get("max")
        if not (isinstance(lo, int | float) and isinstance(hi, int | float)) or not (
            math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        ):
            lo, hi = -10.0, 10.0
        span = (hi - lo) or 1.0
        low.append(lo - 0.1 * span)
        high.append(hi + 0.1 * span)
    while len(low) < n:
        low.append(-10.0)
        high.append(10.0)
    return low, high


def convert_here(model_bytes: bytes, md: dict[str, Any]) -> Outcome:
    """The conversion in this process (the child's work, and the fallback)."""
    try:
        estimator = unpickle_checked(model_bytes, len(md["feature_names"]), len(md["class_names"]))
    except ValueError as exc:
        return Outcome(INVALID, str(exc))
    return checked_forest(estimator, md)


class _ChildFailed(RuntimeError):
    pass


def convert_in_child(model_bytes: bytes, md: dict[str, Any]) -> Outcome:
    """``convert_here`` run in a child process; in-process if the child cannot run."""
    key = hashlib.sha256(model_bytes + json.dumps(md, sort_keys=True).encode()).hexdigest()
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        outcome = _run_child(model_bytes, md)
    except _ChildFailed as exc:
        log.warning("model conversion in a child process failed (%s); converting here", exc)
        outcome = convert_here(model_bytes, md)
    if outcome.status != INVALID:
        _CACHE.put(key, outcome)
    return outcome


def _run_child(model_bytes: bytes, md: dict[str, Any]) -> Outcome:
    header = {"sha256": hashlib.sha256(model_bytes).hexdigest(), "metadata": md}
    package_root = str(Path(__file__).resolve().parents[2])
    # -I: no user site, no PYTHON* variables, no current directory; the package is found
    # where this process found it. No metrics directory: the child records nothing.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    code = (
        f"import sys; sys.path.insert(0, {package_root!r}); "
        "from ml_service.model.conversion import child_main; child_main()"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code],
            input=json.dumps(header).encode() + b"\n" + model_bytes,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _ChildFailed(f"{type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise _ChildFailed(f"exit {proc.returncode}: {tail[0][:300]}")
    first, _, rest = proc.stdout.partition(b"\n")
    try:
        result = json.loads(first)
        status, detail = str(result["status"]), str(result.get("detail", ""))
        forest = None
        if status == FAST:
            with np.load(io.BytesIO(rest), allow_pickle=False) as npz:
                forest = FastForest({k: npz[k] for k in npz.files})
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise _ChildFailed(f"unreadable answer: {exc}") from None
    if status not in (FAST, NO_FAST_PATH, MISMATCH, INVALID):
        raise _ChildFailed(f"unknown status {status!r}")
    return Outcome(status, detail, forest)


def child_main() -> None:
    """The child's side: header line and model bytes on stdin, answer on stdout."""
    data = sys.stdin.buffer.read()
    first, _, model_bytes = data.partition(b"\n")
    header = json.loads(first)
    if hashlib.sha256(model_bytes).hexdigest() != header["sha256"]:
        sys.exit("model bytes arrived damaged")  # the parent then converts in-process
    outcome = convert_here(model_bytes, header["metadata"])
    out = sys.stdout.buffer
    out.write(json.dumps({"status": outcome.status, "detail": outcome.detail}).encode() + b"\n")
    if outcome.forest is not None:
        buf = io.BytesIO()
        np.savez(buf, **outcome.forest.to_arrays())
        out.write(buf.getvalue())
    out.flush()


class _Cache:
    """The last few conversions, by model bytes and metadata: activating a version again
    (a rollback) does not start another child."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._items: OrderedDict[str, Outcome] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Outcome | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: str, outcome: Outcome) -> None:
        with self._lock:
            self._items[key] = outcome
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_CACHE = _Cache()
