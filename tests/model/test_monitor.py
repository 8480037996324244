"""Drift (PSI), confidence histogram and rolling accuracy, in-process and in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sklearn.datasets import load_iris

from ml_service.model import LoadedModel, ModelRegistry, PredictionMonitor
from ml_service.model.drift import bin_shares, psi, training_histogram

IRIS_X = load_iris().data


@pytest.fixture
def model(model_dir: Path, trusted_dir: Path, versions: list[str]) -> LoadedModel:
    return ModelRegistry(model_dir, "iris", trusted_dir).load()


def gauge(feature: str) -> float | None:
    return REGISTRY.get_sample_value("ml_model_feature_drift_psi", {"feature": feature})


def test_psi_basics() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, 5000)
    hist = training_histogram(train)
    assert len(hist["edges"]) == 11
    assert psi(hist["proportions"], bin_shares(rng.normal(0, 1, 2000), hist["edges"])) < 0.02
    shifted = psi(hist["proportions"], bin_shares(rng.normal(1.0, 1, 2000), hist["edges"]))
    assert shifted > 0.3
    # Values beyond the training range land in the open outer bins, not nowhere.
    shares = bin_shares(np.array([-100.0, 100.0]), hist["edges"])
    assert shares[0] == 0.5 and shares[-1] == 0.5


def test_no_drift_on_training_like_inputs(model: LoadedModel) -> None:
    monitor = PredictionMonitor(window=1000, update_interval=0.0)
    rng = np.random.default_rng(1)
    X = IRIS_X[rng.integers(0, len(IRIS_X), size=600)]
    for chunk in np.array_split(X, 60):
        monitor.observe(model, chunk, model.predict_proba(chunk))
    drift = monitor.drift
    assert set(drift) == set(model.feature_names)
    assert max(drift.values()) < 0.1, drift
    for feature, value in drift.items():
        assert gauge(feature) == pytest.approx(value)


def test_shifted_inputs_raise_psi(model: LoadedModel) -> None:
    monitor = PredictionMonitor(window=500, update_interval=0.0)
    rng = np.random.default_rng(2)
    X = IRIS_X[rng.integers(0, len(IRIS_X), size=500)].copy()
    X[:, 2] += 1.5  # petals suddenly 1.5 cm longer
    for row in X:
        monitor.observe(model, row[None, :], model.predict_proba(row[None, :]))
    drift = monitor.drift
    assert drift["petal_length"] > 0.3
    assert drift["sepal_width"] < 0.1
    assert gauge("petal_length") == pytest.approx(drift["petal_length"])


def test_window_slides_and_needs_min_samples(model: LoadedModel) -> None:
    monitor = PredictionMonitor(window=200, min_samples=100, update_interval=0.0)
    shifted = IRIS_X[:50].copy()
    shifted[:, 3] += 3.0
    monitor.observe(model, shifted, model.predict_proba(shifted))
    assert monitor.drift == {}  # 50 rows: too few to say anything
    monitor.observe(model, shifted, model.predict_proba(shifted))
    assert monitor.drift["petal_width"] > 1.0
    # 200 normal rows push the shifted ones out of the window.
    normal = IRIS_X[np.random.default_rng(3).integers(0, 150, 200)]
    monitor.observe(model, normal, model.predict_proba(normal))
    assert monitor.compute_drift(model)["petal_width"] < 0.1


def test_window_restarts_on_model_change(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    a = reg.activate(versions[0])
    monitor = PredictionMonitor(window=300, min_samples=100, update_interval=0.0)
    monitor.observe(a, IRIS_X, a.predict_proba(IRIS_X))
    assert monitor.drift
    b = reg.activate(versions[1])
    monitor.observe(b, IRIS_X[:10], b.predict_proba(IRIS_X[:10]))
    assert monitor.drift == {}


def test_confidence_histogram_and_rolling_accuracy(model: LoadedModel) -> None:
    before = REGISTRY.get_sample_value("ml_model_prediction_confidence_count") or 0.0
    monitor = PredictionMonitor(update_interval=0.0)
    monitor.observe(model, IRIS_X[:7], model.predict_proba(IRIS_X[:7]))
    assert REGISTRY.get_sample_value("ml_model_prediction_confidence_count") == before + 7
    accuracy = 0.0
    for correct in [True, True, True, False]:
        accuracy = monitor.observe_feedback(model.version, correct)
    assert accuracy == 0.75
    assert REGISTRY.get_sample_value("ml_model_rolling_accuracy") == 0.75
    labels = {"model_version": model.version, "outcome": "incorrect"}
    assert REGISTRY.get_sample_value("ml_model_feedback_total", labels) == 1.0


def test_metrics_in_prometheus_multiprocess_mode(
    model_dir: Path, trusted_dir: Path, versions: list[str], tmp_path: Path
) -> None:
    """Two worker processes observe; the collector aggregates as the gauge modes say."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    worker = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from pathlib import Path
        from sklearn.datasets import load_iris
        from ml_service.model import ModelRegistry, PredictionMonitor
        shift = float(sys.argv[1])
        model = ModelRegistry(Path({str(model_dir)!r}), "iris", Path({str(trusted_dir)!r})).load()
        X = load_iris().data.copy()
        X[:, 2] += shift
        monitor = PredictionMonitor(window=150, update_interval=0.0)
        monitor.observe(model, X, model.predict_proba(X))
        monitor.observe_feedback(model.version, shift == 0.0)
        print(monitor.drift["petal_length"])
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}
    psis = []
    for shift in ("0.0", "2.0"):
        out = subprocess.run(
            [sys.executable, "-c", worker, shift],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        psis.append(float(out.stdout.strip()))
    collect = textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    text = subprocess.run(
        [sys.executable, "-c", collect], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    # livemax: the drifting worker's value, not a sum or an average.
    assert lines['ml_model_feature_drift_psi{feature="petal_length"}'] == pytest.approx(max(psis))
    assert max(psis) > 0.3 > min(psis)
    # livemin: the worse worker's accuracy.
    assert lines["ml_model_rolling_accuracy"] == 0.0
    assert lines["ml_model_prediction_confidence_count"] == 300.0
