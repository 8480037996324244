"""Population stability index (PSI) with bins fixed at training time.

Training stores, per feature, bin edges at the deciles of the training values and
the share of training rows in each bin. Serving bins recent inputs with the same
edges (the outer bins are open-ended, so out-of-range values still count) and
compares: PSI = sum((a - e) * ln(a / e)). Shares are floored at ``EPSILON`` so an
empty bin gives a large but finite value. Rule of thumb: < 0.1 stable,
0.1-0.2 moderate shift, > 0.2 significant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

EPSILON = 1e-4
DEFAULT_BINS = 10


def bin_edges(values: npt.NDArray[np.float64], n_bins: int = DEFAULT_BINS) -> list[float]:
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))
    return [float(v) for v in np.unique(quantiles)]


def bin_shares(values: npt.NDArray[np.float64], edges: list[float]) -> npt.NDArray[np.float64]:
    """Share of ``values`` per bin; bins are [e0, e1), [e1, e2), ... with open outer ends."""
    cuts = np.asarray(edges[1:-1], dtype=np.float64)
    n_bins = max(len(edges) - 1, 1)
    idx = np.searchsorted(cuts, np.asarray(values, dtype=np.float64), side="right")
    counts = np.bincount(idx, minlength=n_bins)[:n_bins].astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def training_histogram(
    values: npt.NDArray[np.float64], n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    edges = bin_edges(values, n_bins)
    return {"edges": edges, "proportions": [float(p) for p in bin_shares(values, edges)]}


def psi(expected: list[float] | npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> float:
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))
