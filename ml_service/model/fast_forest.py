"""A RandomForest flattened into numpy arrays, evaluated without scikit-learn.

scikit-learn's ``predict_proba`` on one row costs ~15 ms for 100 trees, nearly all
of it joblib's per-tree dispatch. Here every node of every tree lives in one set of
arrays. For a block of rows we evaluate the split test of *all* nodes at once
(one gather + one comparison), turn it into a "next node" table, and then walk all
trees in lockstep, one gather per tree level; leaves point to themselves, so
walking ``max_depth`` steps lands every tree on its leaf.

Semantics copied from scikit-learn's tree code: inputs are cast to float32 and
compared ``x <= threshold`` (threshold float64); a tree's probability is its leaf's
class distribution normalised to sum 1; the forest averages the trees.
Rows with NaN/inf are not handled here (the caller falls back to scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_TREE_LEAF = -1
# Rows per block: bounds the (rows x nodes) temporary to a few MB.
_BLOCK_ROWS = 256


class UnsupportedModel(TypeError):
    """The estimator is not a forest/tree classifier this module can flatten."""


class FastForest:
    def __init__(self, estimator: Any) -> None:
        trees = _trees_of(estimator)
        self.n_features = int(estimator.n_features_in_)
        self.n_classes = len(estimator.classes_)
        feature_parts, threshold_parts, left_parts, right_parts, value_parts = [], [], [], [], []
        roots = []
        offset = 0
        max_depth = 0
        for tree in trees:
            t = tree.tree_
            if t.n_outputs != 1 or t.value.shape[2] != self.n_classes:
                raise UnsupportedModel("multi-output trees are not supported")
            n = t.node_count
            left = t.children_left.astype(np.int64)
            right = t.children_right.astype(np.int64)
            is_leaf = left == _TREE_LEAF
            own = np.arange(n, dtype=np.int64)
            # Leaves loop onto themselves so a fixed number of steps is always safe.
            left = np.where(is_leaf, own, left) + offset
            right = np.where(is_leaf, own, right) + offset
            feature = np.where(is_leaf, 0, t.feature).astype(np.intp)
            threshold = np.where(is_leaf, np.inf, t.threshold).astype(np.float64)
            value = t.value[:, 0, :].astype(np.float64)
            norm = value.sum(axis=1, keepdims=True)
            norm[norm == 0.0] = 1.0
            feature_parts.append(feature)
            threshold_parts.append(threshold)
            left_parts.append(left)
            right_parts.append(right)
            value_parts.append(value / norm)
            roots.append(offset)
            offset += n
            max_depth = max(max_depth, int(t.max_depth))
        self.n_trees = len(trees)
        self.n_nodes = offset
        self.max_depth = max_depth
        self.feature = np.concatenate(feature_parts)
        self.threshold = np.concatenate(threshold_parts)
        self.left = np.concatenate(left_parts)
        self.right = np.concatenate(right_parts)
        self.leaf_value = np.concatenate(value_parts)
        self.roots = np.asarray(roots, dtype=np.int64)
        for arr in (self.feature, self.threshold, self.left, self.right, self.leaf_value):
            arr.flags.writeable = False

    def predict_proba(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        X32 = np.asarray(X, dtype=np.float32)
        if X32.ndim != 2 or X32.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {X32.shape}")
        n = X32.shape[0]
        if n == 1:
            return self._one_row(X32[0])[None, :]
        out = np.empty((n, self.n_classes), dtype=np.float64)
        for start in range(0, n, _BLOCK_ROWS):
            out[start : start + _BLOCK_ROWS] = self._block(X32[start : start + _BLOCK_ROWS])
        return out

    def _one_row(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        # float32 vs float64 comparison promotes exactly, like scikit-learn's Cython code.
        goes_left = x[self.feature] <= self.threshold
        nxt = np.where(goes_left, self.left, self.right)
        idx = self.roots
        for _ in range(self.max_depth):
            idx = nxt[idx]
        proba: npt.NDArray[np.float64] = self.leaf_value[idx].sum(axis=0) / self.n_trees
        return proba

    def _block(self, X32: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        goes_left = X32[:, self.feature] <= self.threshold
        nxt = np.where(goes_left, self.left, self.right)
        idx = np.broadcast_to(self.roots, (X32.shape[0], self.n_trees))
        for _ in range(self.max_depth):
            idx = np.take_along_axis(nxt, idx, axis=1)
        proba: npt.NDArray[np.float64] = self.leaf_value[idx].sum(axis=1) / self.n_trees
        return proba


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
