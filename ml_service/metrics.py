"""Prometheus metrics of the API (names are a contract: alert rules use them).

The model-side metrics (integrity failures, drift PSI, confidence, feedback and
``ml_model_rolling_accuracy``) live in ``ml_service.model.metrics``; ``/feedback``
feeds them through ``PredictionMonitor.observe_feedback``.

Multiprocess mode: ``python -m ml_service`` sets ``PROMETHEUS_MULTIPROC_DIR``
before anything imports prometheus_client, so every worker writes its samples to
memory-mapped files there and ``/metrics`` (served by whichever worker) merges
them. Without the variable (in-process tests) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

from . import metric_values  # noqa: F401  (before any metric is defined)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter(
    "ml_api_requests_total",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "ml_api_request_duration_seconds",
    "Request latency by route template",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PREDICTIONS = Counter(
    "ml_api_predictions_total",
    "Predicted instances by class and model version",
    ["class_name", "model_version"],
)
AUTH_FAILURES = Counter(
    "ml_api_auth_failures_total", "Refused credentials and tokens by reason", ["reason"]
)
RATE_LIMITED = Counter(
    "ml_api_rate_limited_total", "Requests refused by a rate limit", ["endpoint_class"]
)
AUDIT_WRITE_FAILURES = Counter(
    "ml_api_audit_write_failures_total",
    "Audit records that could not be written (their requests were answered 503)",
)
LOGIN_HASHES = Counter(
    "ml_api_login_hashes_total", "Password verifications (argon2) run by POST /token"
)
REDIS_UP = Gauge(
    "ml_api_redis_up",
    "1 when Redis answers (minimum over live workers)",
    multiprocess_mode="livemin",
)
MODEL_INFO = Gauge(
    "ml_model_info",
    "1 for the model version this worker serves",
    ["name", "version", "sha256"],
    multiprocess_mode="livemax",
)

_request_children: dict[tuple[str, str, int], object] = {}
_duration_children: dict[str, object] = {}
# Label values come from fixed sets only: a client-chosen method (PROPFIND, MKCOL, ...) must
# not open a new series. Routes are templates or "unmatched"; statuses are what the app sends.
# GRPC: the gRPC front end's calls (ml_service/api/oip_grpc.py), one fixed label like the rest.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "GRPC"})


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    if method not in METHODS:
        method = "other"
    key = (route, method, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUESTS.labels(route, method, str(status))
    child.inc()  # type: ignore[attr-defined]
    hist = _duration_children.get(route)
    if hist is None:
        hist = _duration_children[route] = REQUEST_DURATION.labels(route)
    hist.observe(seconds)  # type: ignore[attr-defined]


_prediction_children: dict[tuple[str, str], object] = {}


def count_prediction(class_name: str, model_version: str) -> None:
    # labels() takes a lock and builds its key on every call; the children are few.
    key = (class_name, model_version)
    child = _prediction_children.get(key)
    if child is None:
        if len(_prediction_children) > 1000:  # versions come and go: keep it bounded
            _prediction_children.clear()
        child = _prediction_children[key] = PREDICTIONS.labels(class_name, model_version)
    child.inc()  # type: ignore[attr-defined]


_served: tuple[str, str, str] | None = None


def set_model_info(name: str, version: str, sha256: str) -> None:
    global _served
    labels = (name, version, sha256)
    if _served == labels:
        return
    if _served is not None:
        # Multiprocess files keep a removed child's last value, so zero it explicitly.
        MODEL_INFO.labels(*_served).set(0)
    MODEL_INFO.labels(*labels).set(1)
    _served = labels


def render() -> tuple[bytes, str]:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        _mp.mark_process_dead(pid)
