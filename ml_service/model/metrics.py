"""Prometheus metrics of the model side.

Created once at import in the default registry. With several uvicorn workers the
service sets ``PROMETHEUS_MULTIPROC_DIR`` before ``prometheus_client`` is first
imported and exposes them through a ``MultiProcessCollector``.

Gauge modes in multiprocess mode are chosen, not defaulted:
* drift PSI: ``livemax``. Every worker keeps its own window of recent requests, so
  each computes its own PSI; the exported value is the worst live worker, which is
  the one an alert must see (an average would dilute a drifting slice of traffic).
* rolling accuracy: ``livemin``, for the same reason, in the other direction.
Counters and histograms are summed across workers, which is what they mean.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .. import metric_values  # noqa: F401  (before any metric is defined)

INTEGRITY_FAILURES = Counter(
    "ml_model_integrity_failures",
    "Model artifacts refused or found changed on disk, by reason",
    ["reason"],
)
IMPORTS = Counter(
    "ml_model_imports",
    "Versions looked at in the IDE's drop box, by result (imported, present, refused)",
    ["result"],
)
FEATURE_DRIFT_PSI = Gauge(
    "ml_model_feature_drift_psi",
    "Population stability index of recent inputs against the training distribution",
    ["feature"],
    multiprocess_mode="livemax",
)
PREDICTION_CONFIDENCE = Histogram(
    "ml_model_prediction_confidence",
    "Highest class probability of each prediction",
    buckets=(0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
FEEDBACK = Counter(
    "ml_model_feedback",
    "Ground-truth feedback on predictions, by model version and outcome",
    ["model_version", "outcome"],
)
ROLLING_ACCURACY = Gauge(
    "ml_model_rolling_accuracy",
    "Accuracy over the most recent feedback (per worker window; worst worker exported)",
    multiprocess_mode="livemin",
)
