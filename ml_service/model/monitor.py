"""PredictionMonitor: input drift (PSI per feature), prediction confidence, rolling accuracy."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from . import metrics
from .drift import bin_shares, psi
from .loaded import LoadedModel

log = logging.getLogger("ml_service.model")


class PredictionMonitor:
    """Per-process sliding window of recent inputs, compared with the training data.

    ``observe`` is cheap (a copy into a ring buffer and a histogram update); PSI is
    recomputed at most every ``update_interval`` seconds and only once
    ``min_samples`` rows are in the window (PSI of a handful of rows is noise).
    The window restarts when the model version changes, because drift is measured
    against *that* model's training data.
    """

    def __init__(
        self,
        window: int = 1000,
        *,
        min_samples: int = 100,
        update_interval: float = 5.0,
        feedback_window: int = 500,
    ) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be positive")
        self.window = window
        self.min_samples = min(min_samples, window)
        self.update_interval = update_interval
        self._lock = threading.Lock()
        self._version: str | None = None
        self._buffer: npt.NDArray[np.float64] | None = None
        self._pos = 0
        self._count = 0
        self._last_update = float("-inf")
        self._psi: dict[str, float] = {}
        self._feedback: deque[bool] = deque(maxlen=feedback_window)

    def observe(
        self, model: LoadedModel, X: npt.NDArray[np.float64], probas: npt.NDArray[np.float64]
    ) -> None:
        X = np.asarray(X, dtype=np.float64)
        probas = np.asarray(probas, dtype=np.float64)
        for confidence in probas.max(axis=1).tolist():
            metrics.PREDICTION_CONFIDENCE.observe(confidence)
        with self._lock:
            if self._version != model.version or self._buffer is None:
                self._version = model.version
                self._buffer = np.empty((self.window, X.shape[1]), dtype=np.float64)
                self._pos = self._count = 0
                self._psi = {}
            rows = X[-self.window :]
            n = rows.shape[0]
            end = self._pos + n
            if end <= self.window:
                self._buffer[self._pos : end] = rows
            else:
                first = self.window - self._pos
                self._buffer[self._pos :] = rows[:first]
                self._buffer[: n - first] = rows[first:]
            self._pos = end % self.window
            self._count = min(self._count + n, self.window)
            now = time.monotonic()
            if self._count >= self.min_samples and now - self._last_update >= self.update_interval:
                self._last_update = now
                self._update_psi(model)

    def compute_drift(self, model: LoadedModel) -> dict[str, float]:
        """Recompute PSI now (if enough samples) and return the latest values."""
        with self._lock:
            if self._version == model.version and self._count >= self.min_samples:
                self._last_update = time.monotonic()
                self._update_psi(model)
            return dict(self._psi)

    @property
    def drift(self) -> dict[str, float]:
        with self._lock:
            return dict(self._psi)

    def observe_feedback(self, model_version: str, correct: bool) -> float:
        """Record ground truth for one prediction; return the rolling accuracy."""
        metrics.FEEDBACK.labels(
            model_version=model_version, outcome="correct" if correct else "incorrect"
        ).inc()
        with self._lock:
            self._feedback.append(bool(correct))
            accuracy = sum(self._feedback) / len(self._feedback)
        metrics.ROLLING_ACCURACY.set(accuracy)
        return accuracy

    def _update_psi(self, model: LoadedModel) -> None:
        assert self._buffer is not None
        data = self._buffer[: self._count]
        stats: dict[str, Any] = model.metadata.get("feature_stats") or {}
        for i, feature in enumerate(model.feature_names):
            hist = (stats.get(feature) or {}).get("histogram") or {}
            edges, expected = hist.get("edges"), hist.get("proportions")
            if not edges or not expected or len(expected) != max(len(edges) - 1, 1):
                continue
            value = psi(expected, bin_shares(data[:, i], edges))
            self._psi[feature] = value
            metrics.FEATURE_DRIFT_PSI.labels(feature=feature).set(value)
