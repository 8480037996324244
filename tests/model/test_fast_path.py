"""The numpy forest gives scikit-learn's classes and probabilities (within 1e-6)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from signed_models import SigningKeys
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from ml_service.model import ModelRegistry, conversion
from ml_service.model.artifact import canonical_json, write_artifact
from ml_service.model.fast_forest import FastForest, UnsupportedModel
from ml_service.model.signing import load_private_key

TOL = 1e-6
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
LOW, HIGH = IRIS_X.min(axis=0), IRIS_X.max(axis=0)


def random_in_range(n: int = 10_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(LOW, HIGH, size=(n, 4))


def assert_equivalent(reference, fast_predict) -> None:
    for X in (IRIS_X, random_in_range()):
        expected = reference.predict_proba(X)
        got = fast_predict(X)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOL
        np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    # The single-row path is a different code path: check it row by row on Iris.
    singles = np.vstack([fast_predict(IRIS_X[i : i + 1]) for i in range(len(IRIS_X))])
    assert np.abs(singles - reference.predict_proba(IRIS_X)).max() <= TOL


ESTIMATORS = {
    "forest-100": lambda: RandomForestClassifier(n_estimators=100, random_state=0),
    "forest-shallow": lambda: RandomForestClassifier(n_estimators=30, max_depth=3, random_state=1),
    "forest-leafy": lambda: RandomForestClassifier(
        n_estimators=20, min_samples_leaf=5, bootstrap=False, random_state=2
    ),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=50, random_state=3),
    "single-tree": lambda: DecisionTreeClassifier(random_state=4),
}


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_fast_forest_matches_sklearn(kind: str) -> None:
    model = ESTIMATORS[kind]().fit(IRIS_X, IRIS_Y)
    assert_equivalent(model, FastForest.from_estimator(model).predict_proba)


def test_string_labels_and_thresholds_at_ties() -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]
    model = RandomForestClassifier(n_estimators=25, random_state=5).fit(IRIS_X, names)
    fast = FastForest.from_estimator(model)
    # Values exactly at split thresholds exercise the float32 "x <= t" rule.
    thresholds = np.unique(np.concatenate([e.tree_.threshold for e in model.estimators_]))
    thresholds = thresholds[thresholds > 0]
    X = np.tile(np.median(IRIS_X, axis=0), (len(thresholds), 1))
    for j in range(4):
        X[:, j] = thresholds
        assert np.abs(fast.predict_proba(X) - model.predict_proba(X)).max() <= TOL


@pytest.mark.parametrize(
    "estimator",
    [LogisticRegression(max_iter=500), GradientBoostingClassifier(n_estimators=5)],
    ids=["logistic", "gradient-boosting"],
)
def test_unsupported_models_are_rejected_by_the_fast_path(estimator) -> None:
    estimator.fit(IRIS_X, IRIS_Y)
    with pytest.raises(UnsupportedModel):
        FastForest.from_estimator(estimator)


def _estimator_on_disk(model_dir: Path, version: str):
    return joblib.load(model_dir / "iris" / version / "model.joblib")


def test_registry_model_uses_fast_path_and_matches(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    model = ModelRegistry(model_dir, "iris", trusted_dir).load()
    assert model.backend == "numpy-forest"
    assert model.estimator is None  # the worker holds arrays, not the unpickled estimator
    assert_equivalent(_estimator_on_disk(model_dir, model.version), model.predict_proba)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # sklearn's
def test_nan_rows_match_sklearn_and_infinity_is_refused(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    model = ModelRegistry(model_dir, "iris", trusted_dir).load()
    reference = _estimator_on_disk(model_dir, model.version)
    rng = np.random.default_rng(7)
    X = random_in_range(2_000, seed=7)
    X[rng.random(X.shape) < 0.3] = np.nan
    X[:4] = np.nan  # rows that are all NaN
    assert np.abs(model.predict_proba(X) - reference.predict_proba(X)).max() <= TOL
    one = np.array([[5.1, np.nan, 1.4, 0.2]])
    np.testing.assert_allclose(model.predict_proba(one), reference.predict_proba(one), atol=TOL)
    for bad in ([[5.1, np.inf, 1.4, 0.2]], [[1e39, 3.0, 1.4, 0.2]]):
        with pytest.raises(ValueError, match="infinity"):
            reference.predict_proba(np.array(bad))
        with pytest.raises(ValueError, match="infinity"):
            model.predict_proba(np.array(bad))


def _sign_custom_model(model_dir: Path, keys: SigningKeys, estimator, version: str) -> None:
    src = sorted((model_dir / "iris").iterdir())[0]
    md = json.loads((src / "metadata.json").read_text())
    md["version"] = version
    md["model_type"] = type(estimator).__name__
    buf = io.BytesIO()
    joblib.dump(estimator, buf)
    write_artifact(
        model_dir,
        "iris",
        {"model.joblib": buf.getvalue(), "metadata.json": canonical_json(md)},
        load_private_key(keys.private_key),
        version=version,
    )


def test_unsupported_model_type_serves_through_sklearn(
    model_dir: Path, trusted_dir: Path, versions: list[str], session_keys: SigningKeys
) -> None:
    estimator = LogisticRegression(max_iter=500).fit(IRIS_X, IRIS_Y)
    _sign_custom_model(model_dir, session_keys, estimator, "20300101T000000Z")
    model = ModelRegistry(model_dir, "iris", trusted_dir).activate("20300101T000000Z")
    assert model.backend == "sklearn"
    np.testing.assert_array_equal(model.predict_proba(IRIS_X), estimator.predict_proba(IRIS_X))


MD = {"feature_names": ["a", "b", "c", "d"], "feature_stats": {}}


def test_self_check_disables_a_wrong_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(IRIS_X, IRIS_Y)
    good = conversion.checked_forest(model, MD)
    assert good.status == conversion.FAST and good.forest is not None
    arrays = good.forest.to_arrays()
    arrays["leaf_value"] = arrays["leaf_value"][:, ::-1]  # classes in the wrong order
    monkeypatch.setattr(FastForest, "from_estimator", lambda *_: FastForest(arrays))
    broken = conversion.checked_forest(model, MD)
    assert broken.status == conversion.MISMATCH and broken.forest is None


def test_self_check_finds_a_wrong_nan_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(IRIS_X, IRIS_Y)
    arrays = FastForest.from_estimator(model).to_arrays()
    arrays["missing_left"] = ~arrays["missing_left"]
    monkeypatch.setattr(FastForest, "from_estimator", lambda *_: FastForest(arrays))
    assert conversion.checked_forest(model, MD).status == conversion.MISMATCH


def test_a_model_that_refuses_nan_gets_a_fast_path_that_refuses_it() -> None:
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(IRIS_X, IRIS_Y)
    sklearn_proba = model.predict_proba

    def refusing(X):
        if np.isnan(X).any():
            raise ValueError("Input X contains NaN.")
        return sklearn_proba(X)

    model.predict_proba = refusing  # the type stays RandomForestClassifier
    outcome = conversion.checked_forest(model, MD)
    assert outcome.status == conversion.FAST and outcome.forest is not None
    assert not outcome.forest.accepts_nan
    with pytest.raises(ValueError, match="NaN"):
        outcome.forest.predict_proba(np.array([[5.1, np.nan, 1.4, 0.2]]))
    np.testing.assert_allclose(
        outcome.forest.predict_proba(IRIS_X), sklearn_proba(IRIS_X), atol=TOL
    )
