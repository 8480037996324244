"""LoadedModel: a verified artifact turned into something that predicts fast."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt

from .artifact import R_BAD_METADATA, R_LOAD_FAILED, VerifiedArtifact
from .errors import ModelIntegrityError
from .fast_forest import FastForest, UnsupportedModel

log = logging.getLogger("ml_service.model")

BACKEND_FAST = "numpy-forest"
BACKEND_SKLEARN = "sklearn"
EQUIVALENCE_TOLERANCE = 1e-6
_SELF_CHECK_ROWS = 512


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """An immutable, verified, ready-to-serve model version.

    Instances are swapped as a whole (one reference assignment), so a request that
    picked one up keeps using it even while another version is activated.
    """

    name: str
    version: str
    sha256: str
    metadata: dict[str, Any]
    feature_names: list[str]
    class_names: list[str]
    backend: str
    key_id: str
    file_hashes: dict[str, str]
    estimator: Any = field(repr=False)
    _fast: FastForest | None = field(repr=False, default=None)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict_proba(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n, {self.n_features}), got {X.shape}")
        if self._fast is not None and np.isfinite(X).all():
            return self._fast.predict_proba(X)
        # scikit-learn defines what NaN does in a tree; only it may decide.
        result: npt.NDArray[np.float64] = np.asarray(
            self.estimator.predict_proba(X), dtype=np.float64
        )
        return result

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Class indices (into ``class_names``)."""
        return np.asarray(self.predict_proba(X).argmax(axis=1), dtype=np.intp)

    def info(self) -> dict[str, Any]:
        """What ``GET /model/info`` can return as is (JSON-serialisable)."""
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "backend": self.backend,
            "signing_key_id": self.key_id,
            "trained_at": md.get("trained_at"),
            "metrics": md.get("metrics", {}),
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "params": md.get("params", {}),
            "data_sha256": md.get("data", {}).get("sha256"),
        }


def build_loaded_model(artifact: VerifiedArtifact, allow_fast: bool = True) -> LoadedModel:
    """Unpickle a *verified* artifact and pick the fastest equivalent backend."""
    md = artifact.metadata
    version = artifact.version
    try:
        feature_names = [str(f) for f in md["feature_names"]]
        class_names = [str(c) for c in md["class_names"]]
        if md.get("name", artifact.name) != artifact.name or md.get("version") != version:
            raise ValueError("metadata name/version differ from the manifest")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(version, R_BAD_METADATA, f"metadata.json: {exc}") from None
    try:
        # Safe only because the bytes were verified against a trusted signature.
        estimator = joblib.load(io.BytesIO(artifact.model_bytes))
    except Exception as exc:
        raise ModelIntegrityError(version, R_LOAD_FAILED, f"unpickling failed: {exc}") from None
    try:
        if not hasattr(estimator, "predict_proba"):
            raise ValueError(f"{type(estimator).__name__} has no predict_proba")
        if int(estimator.n_features_in_) != len(feature_names):
            raise ValueError("n_features_in_ differs from metadata feature_names")
        if len(estimator.classes_) != len(class_names):
            raise ValueError("classes_ differ in number from metadata class_names")
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(version, R_LOAD_FAILED, str(exc)) from None
    if hasattr(estimator, "n_jobs"):
        # Thread pools per request cost more than they save at these sizes.
        estimator.n_jobs = None

    fast: FastForest | None = None
    if allow_fast:
        try:
            fast = FastForest(estimator)
        except UnsupportedModel as exc:
            log.info(
                "model %s/%s: no fast path (%s), using scikit-learn", artifact.name, version, exc
            )
        else:
            fast = _self_checked(fast, estimator, md, artifact.name, version)

    return LoadedModel(
        name=artifact.name,
        version=version,
        sha256=artifact.model_sha256,
        metadata=md,
        feature_names=feature_names,
        class_names=class_names,
        backend=BACKEND_FAST if fast is not None else BACKEND_SKLEARN,
        key_id=artifact.key_id,
        file_hashes=artifact.file_hashes(),
        estimator=estimator,
        _fast=fast,
    )


def _self_checked(
    fast: FastForest, estimator: Any, md: dict[str, Any], name: str, version: str
) -> FastForest | None:
    """Compare the fast path with scikit-learn on in-range rows; any mismatch disables it."""
    rng = np.random.default_rng(0)
    low, high = _feature_bounds(md, fast.n_features)
    X = rng.uniform(low, high, size=(_SELF_CHECK_ROWS, fast.n_features))
    expected = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    got = np.vstack([fast.predict_proba(X), fast.predict_proba(X[:1])])
    expected = np.vstack([expected, expected[:1]])
    diff = float(np.abs(expected - got).max())
    if not diff <= EQUIVALENCE_TOLERANCE:
        log.error(
            "model %s/%s: fast path differs from scikit-learn by %g; using scikit-learn",
            name,
            version,
            diff,
        )
        return None
    return fast


def _feature_bounds(md: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
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
