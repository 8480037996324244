"""A RandomForest flattened into numpy arrays, evaluated without scikit-learn.

scikit-learn's ``predict_proba`` on one row costs ~15 ms for 100 trees, nearly all
of it joblib's per-tree dispatch. Here every node of every tree lives in one set of
arrays. For a block of rows we evaluate the split test of *all* nodes at once
(one gather + one comparison), turn it into a "next node" table, and then walk all
trees in lockstep, one gather per tree level; leaves point to themselves, so
walking ``max_depth`` steps lands every tree on its leaf.

Semantics copied from scikit-learn's tree code: inputs are cast to float32 and
compared ``x <= threshold`` (threshold float64); a NaN goes to the side the tree recorded
in ``missing_go_to_left`` (when no NaN was seen in training, the child with more samples);
infinity is refused, as scikit-learn refuses it; a tree's probability is its leaf's class
distribution normalised to sum 1; the forest averages the trees.

The arrays alone describe the forest (``to_arrays`` / ``from_arrays``), so a short-lived
child process can unpickle and flatten the model and the worker that serves it never
imports scikit-learn (see ``conversion.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_TREE_LEAF = -1
# Rows per block: bounds the (rows x nodes) temporary to a few MB.
_BLOCK_ROWS = 256
_ARRAYS = {
    "feature": np.intp,
    "threshold": np.float64,
    "left": np.int64,
    "right": np.int64,
    "missing_left": np.bool_,
    "leaf_value": np.float64,
    "roots": np.int64,
}
_SCALARS = ("n_features", "n_classes", "max_depth", "accepts_nan")


class UnsupportedModel(TypeError):
    """The estimator is not a forest/tree classifier this module can flatten."""


class FastForest:
    """Immutable arrays of a flattened forest; build with ``from_estimator`` or
    ``from_arrays``."""

    feature: npt.NDArray[np.intp]
    threshold: npt.NDArray[np.float64]
    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    missing_left: npt.NDArray[np.bool_]
    leaf_value: npt.NDArray[np.float64]
    roots: npt.NDArray[np.int64]

    def __init__(self, arrays: dict[str, Any]) -> None:
        """``arrays``: what ``to_arrays`` returned. Checked, so that arrays from another
        process cannot index outside each other."""
        missing = [k for k in (*_ARRAYS, *_SCALARS) if k not in arrays]
        if missing:
            raise ValueError(f"forest arrays lack {missing}")
        for key, dtype in _ARRAYS.items():
            arr: npt.NDArray[Any] = np.array(arrays[key], dtype=dtype)  # a private copy
            arr.flags.writeable = False
            setattr(self, key, arr)
        self.n_features = int(arrays["n_features"])
        self.n_classes = int(arrays["n_classes"])
        self.max_depth = int(arrays["max_depth"])
        self.accepts_nan = bool(arrays["accepts_nan"])
        self.n_nodes = len(self.feature)
        self.n_trees = len(self.roots)
        _check_shapes(self)

    @classmethod
    def from_estimator(cls, estimator: Any, accepts_nan: bool = True) -> FastForest:
        """Flatten a fitted forest or tree; ``UnsupportedModel`` for anything else."""
        trees = _trees_of(estimator)
        n_classes = len(estimator.classes_)
        parts: dict[str, list[Any]] = {k: [] for k in _ARRAYS if k != "roots"}
        roots = []
        offset = 0
        max_depth = 0
        for tree in trees:
            t = tree.tree_
            if t.n_outputs != 1 or t.value.shape[2] != n_classes:
                raise UnsupportedModel("multi-output trees are not supported")
            if not hasattr(t, "missing_go_to_left"):
                raise UnsupportedModel("trees without missing_go_to_left")
            n = t.node_count
            left = t.children_left.astype(np.int64)
            right = t.children_right.astype(np.int64)
            is_leaf = left == _TREE_LEAF
            own = np.arange(n, dtype=np.int64)
            # Leaves loop onto themselves so a fixed number of steps is always safe.
            parts["left"].append(np.where(is_leaf, own, left) + offset)
            parts["right"].append(np.where(is_leaf, own, right) + offset)
            parts["feature"].append(np.where(is_leaf, 0, t.feature).astype(np.intp))
            parts["threshold"].append(np.where(is_leaf, np.inf, t.threshold).astype(np.float64))
            parts["missing_left"].append(~is_leaf & (np.asarray(t.missing_go_to_left) != 0))
            value = t.value[:, 0, :].astype(np.float64)
            norm = value.sum(axis=1, keepdims=True)
            norm[norm == 0.0] = 1.0
            parts["leaf_value"].append(value / norm)
            roots.append(offset)
            offset += n
            max_depth = max(max_depth, int(t.max_depth))
        arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
        arrays["roots"] = np.asarray(roots, dtype=np.int64)
        arrays["n_features"] = int(estimator.n_features_in_)
        arrays["n_classes"] = n_classes
        arrays["max_depth"] = max_depth
        arrays["accepts_nan"] = accepts_nan
        return cls(arrays)

    def with_nan(self, accepts_nan: bool) -> FastForest:
        return FastForest({**self.to_arrays(), "accepts_nan": accepts_nan})

    def to_arrays(self) -> dict[str, Any]:
        arrays: dict[str, Any] = {k: getattr(self, k) for k in _ARRAYS}
        for key in _SCALARS:
            arrays[key] = np.asarray(getattr(self, key))
        return arrays

    def predict_proba(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        with np.errstate(over="ignore"):  # too large for float32 becomes inf: refused below
            X32 = np.asarray(X, dtype=np.float32)
        if X32.ndim != 2 or X32.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {X32.shape}")
        nan = None
        if not np.isfinite(X32).all():
            if np.isinf(X32).any():
                raise ValueError("input contains infinity or a value too large for float32")
            if not self.accepts_nan:
                raise ValueError("input contains NaN, which this model does not accept")
            nan = np.isnan(X32)
        n = X32.shape[0]
        if n == 1:
            return self._one_row(X32[0], None if nan is None else nan[0])[None, :]
        out = np.empty((n, self.n_classes), dtype=np.float64)
        for start in range(0, n, _BLOCK_ROWS):
            block = slice(start, start + _BLOCK_ROWS)
            out[block] = self._block(X32[block], None if nan is None else nan[block])
        return out

    def _one_row(
        self, x: npt.NDArray[np.float32], nan: npt.NDArray[np.bool_] | None
    ) -> npt.NDArray[np.float64]:
        # float32 vs float64 comparison promotes exactly, like scikit-learn's Cython code.
        goes_left = x[self.feature] <= self.threshold
        if nan is not None:  # NaN <= t is False: only the missing_left nodes change
            goes_left |= nan[self.feature] & self.missing_left
        nxt = np.where(goes_left, self.left, self.right)
        idx = self.roots
        for _ in range(self.max_depth):
            idx = nxt[idx]
        proba: npt.NDArray[np.float64] = self.leaf_value[idx].sum(axis=0) / self.n_trees
        return proba

    def _block(
        self, X32: npt.NDArray[np.float32], nan: npt.NDArray[np.bool_] | None
    ) -> npt.NDArray[np.float64]:
        goes_left = X32[:, self.feature] <= self.threshold
        if nan is not None:
            goes_left |= nan[:, self.feature] & self.missing_left
        nxt = np.where(goes_left, self.left, self.right)
        idx = np.broadcast_to(self.roots, (X32.shape[0], self.n_trees))
        for _ in range(self.max_depth):
            idx = np.take_along_axis(nxt, idx, axis=1)
        proba: npt.NDArray[np.float64] = self.leaf_value[idx].sum(axis=1) / self.n_trees
        return proba


def _check_shapes(f: FastForest) -> None:
    n = f.n_nodes
    if not all(len(a) == n for a in (f.threshold, f.left, f.right, f.missing_left)):
        raise ValueError("forest node arrays differ in length")
    if f.leaf_value.shape != (n, f.n_classes) or f.n_classes < 1 or f.n_features < 1:
        raise ValueError("leaf values do not match the number of nodes and classes")
    if f.n_trees < 1 or not 0 <= f.max_depth <= n:
        raise ValueError("forest has no trees or an impossible depth")
    for name, idx, bound in (
        ("left", f.left, n),
        ("right", f.right, n),
        ("roots", f.roots, n),
        ("feature", f.feature, f.n_features),
    ):
        if idx.size and (idx.min() < 0 or idx.max() >= bound):
            raise ValueError(f"forest {name} indices out of range")


def _trees_of(estimator: Any) -> list[Any]:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    # Exact types only: a subclass may override predict_proba with other semantics.
    if type(estimator) in (RandomForestClassifier, ExtraTreesClassifier):
        trees = list(estimator.estimators_)
    elif type(estimator) in (DecisionTreeClassifier, ExtraTreeClassifier):
        trees = [estimator]
    else:
        raise UnsupportedModel(f"{type(estimator).__name__} has no fast path")
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise UnsupportedModel("multi-output forests are not supported")
    if not trees:
        raise UnsupportedModel("forest has no trees")
    return trees
