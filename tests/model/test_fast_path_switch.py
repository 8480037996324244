"""ML_MODEL_FAST_PATH=0 serves through scikit-learn (operator kill switch)."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from ml_service.model import ModelRegistry


@pytest.mark.parametrize(
    ("value", "backend"), [("0", "sklearn"), ("off", "sklearn"), ("1", "numpy-forest")]
)
def test_env_switch(
    value: str,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    model_dir: Path,
    trusted_dir: Path,
    versions: list[str],
) -> None:
    monkeypatch.setenv("ML_MODEL_FAST_PATH", value)
    model = ModelRegistry(model_dir, "iris", trusted_dir).load()
    assert model.backend == backend
    X = np.array([[5.9, 3.0, 5.1, 1.8]])
    reference = joblib.load(model_dir / "iris" / model.version / "model.joblib")
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), atol=1e-6)
