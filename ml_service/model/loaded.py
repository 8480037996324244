"""LoadedModel: a verified artifact turned into something that predicts fast."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import conversion
from .artifact import R_BAD_METADATA, R_LOAD_FAILED, VerifiedArtifact
from .errors import ModelIntegrityError
from .fast_forest import FastForest

log = logging.getLogger("ml_service.model")

BACKEND_FAST = "numpy-forest"
BACKEND_SKLEARN = "sklearn"
Converter = Callable[[bytes, dict[str, Any]], conversion.Outcome]


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
    # Exactly one of the two is set: the worker holds no estimator when the fast path serves.
    estimator: Any = field(repr=False)
    _fast: FastForest | None = field(repr=False, default=None)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict_proba(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n, {self.n_features}), got {X.shape}")
        if self._fast is not None:
            return self._fast.predict_proba(X)
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


def build_loaded_model(
    artifact: VerifiedArtifact,
    allow_fast: bool = True,
    convert: Converter = conversion.convert_in_child,
) -> LoadedModel:
    """Pick the fastest backend equivalent to the *verified* artifact's estimator.

    ``convert`` does the unpickling for the fast path (by default in a child process, so
    scikit-learn never enters the worker); only a model without a fast path is unpickled
    here.
    """
    md = artifact.metadata
    version = artifact.version
    try:
        feature_names = [str(f) for f in md["feature_names"]]
        class_names = [str(c) for c in md["class_names"]]
        if md.get("name", artifact.name) != artifact.name or md.get("version") != version:
            raise ValueError("metadata name/version differ from the manifest")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(version, R_BAD_METADATA, f"metadata.json: {exc}") from None

    fast: FastForest | None = None
    estimator: Any = None
    if allow_fast:
        outcome = convert(artifact.model_bytes, md)
        if outcome.status == conversion.INVALID:
            raise ModelIntegrityError(version, R_LOAD_FAILED, outcome.detail)
        fast = outcome.forest
        if outcome.status == conversion.MISMATCH:
            log.error("model %s/%s: %s; using scikit-learn", artifact.name, version, outcome.detail)
        elif fast is None:
            log.info(
                "model %s/%s: no fast path (%s), using scikit-learn",
                artifact.name,
                version,
                outcome.detail,
            )
    if fast is None:
        try:
            # Safe only because the bytes were verified against a trusted signature.
            estimator = conversion.unpickle_checked(
                artifact.model_bytes, len(feature_names), len(class_names)
            )
        except ValueError as exc:
            raise ModelIntegrityError(version, R_LOAD_FAILED, str(exc)) from None
    elif fast.n_features != len(feature_names) or fast.n_classes != len(class_names):
        raise ModelIntegrityError(version, R_LOAD_FAILED, "converted model differs in shape")

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
