"""The model is unpickled and flattened in a child process; the worker gets checked arrays."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from ml_service.model import conversion
from ml_service.model.fast_forest import FastForest

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
MD = {"feature_names": ["a", "b", "c", "d"], "class_names": ["x", "y", "z"]}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_cached_conversions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversion, "_CACHE", conversion._Cache())


def _model_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    joblib.dump(RandomForestClassifier(n_estimators=20, random_state=seed).fit(IRIS_X, IRIS_Y), buf)
    return buf.getvalue()


def test_a_serving_process_never_imports_scikit_learn(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from ml_service.model import ModelRegistry
        model = ModelRegistry({str(model_dir)!r}, "iris", {str(trusted_dir)!r}).load()
        proba = model.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, np.nan, 5.2, 2.3]]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "joblib"))
        print(json.dumps({{"backend": model.backend, "heavy": heavy, "proba": proba.tolist()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["backend"] == "numpy-forest"
    assert result["heavy"] == []
    reference = joblib.load(model_dir / "iris" / versions[-1] / "model.joblib")
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, np.nan, 5.2, 2.3]])
    np.testing.assert_allclose(result["proba"], reference.predict_proba(rows), atol=1e-6)


def test_a_child_that_cannot_start_means_converting_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, "ml_service.model"):
        outcome = conversion.convert_in_child(_model_bytes(), MD)
    assert outcome.status == conversion.FAST and outcome.forest is not None
    assert "child process failed" in caplog.text


def test_bytes_that_do_not_unpickle_are_refused_through_the_child() -> None:
    outcome = conversion.convert_in_child(b"not a pickle", MD)
    assert outcome.status == conversion.INVALID
    assert "unpickling failed" in outcome.detail


def test_bytes_damaged_on_the_way_make_the_child_fail() -> None:
    header = {"sha256": "0" * 64, "metadata": MD}
    done = subprocess.run(
        [sys.executable, "-c", "from ml_service.model.conversion import child_main; child_main()"],
        input=json.dumps(header).encode() + b"\n" + _model_bytes(),
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode != 0
    assert b"damaged" in done.stderr
    assert done.stdout == b""


def test_a_version_converted_once_does_not_start_another_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model_bytes(seed=3)
    first = conversion.convert_in_child(model, MD)

    def no_child(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a second child was started")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert conversion.convert_in_child(model, MD) is first
    with pytest.raises(AssertionError, match="second child"):
        conversion.convert_in_child(_model_bytes(seed=4), MD)


def _arrays() -> dict[str, np.ndarray]:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS_X, IRIS_Y)
    return FastForest.from_estimator(model).to_arrays()


def _mutate(arrays: dict[str, np.ndarray], key: str, value: object) -> dict[str, np.ndarray]:
    changed = dict(arrays)
    changed[key] = value
    return changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: _mutate(a, "left", a["left"] + len(a["left"])), "left indices"),
        (lambda a: _mutate(a, "right", -a["right"] - 1), "right indices"),
        (lambda a: _mutate(a, "feature", a["feature"] + 4), "feature indices"),
        (lambda a: _mutate(a, "roots", a["roots"] + 10**6), "roots indices"),
        (lambda a: _mutate(a, "leaf_value", a["leaf_value"][:, :2]), "leaf values"),
        (lambda a: _mutate(a, "threshold", a["threshold"][:-1]), "differ in length"),
        (lambda a: _mutate(a, "max_depth", np.asarray(10**9)), "impossible depth"),
        (lambda a: {k: v for k, v in a.items() if k != "missing_left"}, "lack"),
    ],
    ids=["left", "right", "feature", "roots", "classes", "length", "depth", "missing"],
)
def test_arrays_from_a_child_are_checked_before_use(change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FastForest(change(_arrays()))


def test_arrays_survive_the_round_trip_through_npz() -> None:
    arrays = _arrays()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        again = FastForest({k: npz[k] for k in npz.files})
    np.testing.assert_array_equal(
        again.predict_proba(IRIS_X), FastForest(arrays).predict_proba(IRIS_X)
    )
