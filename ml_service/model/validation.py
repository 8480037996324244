"""Statistical validation of training data, before any model is fitted.

Every check yields PASS, WARN or FAIL with the measured value and its threshold;
any FAIL stops training. Thresholds live in ``ValidationThresholds`` (the CLI
exposes each as an option).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .dataset import Dataset

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
# 0.6745 = Phi^-1(0.75): makes the MAD comparable with a standard deviation.
_MAD_SCALE = 0.6745


@dataclass
class ValidationThresholds:
    min_rows: int = 30
    max_missing_fraction: float = 0.0
    # Plausible range of every feature (cm for Iris); per-feature overrides below.
    value_range: tuple[float, float] = (0.0, 30.0)
    feature_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_duplicate_fraction: float = 0.05
    max_conflicting_duplicates: int = 0
    min_class_count: int = 10
    min_class_ratio: float = 0.5  # smallest class / largest class
    robust_z: float = 3.5
    max_outlier_fraction: float = 0.05
    isolation_score: float = 0.62  # IsolationForest anomaly score above which a row is flagged
    max_isolation_fraction: float = 0.05
    random_state: int = 0

    def range_for(self, feature: str) -> tuple[float, float]:
        return self.feature_ranges.get(feature, self.value_range)


@dataclass
class CheckResult:
    name: str
    status: str
    detail: str


@dataclass
class ValidationReport:
    rows: int
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    def format(self) -> str:
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = [f"Data validation ({self.rows} rows)"]
        for c in self.checks:
            lines.append(f"  [{c.status}] {c.name:<{width}}  {c.detail}")
        lines.append(
            "  result: " + ("data OK" if self.ok else f"{len(self.failures)} check(s) FAILED")
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _modified_z(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    med = np.median(values)
    dev = np.abs(values - med)
    mad = np.median(dev)
    if mad == 0:
        # Over half the values are equal; the mean absolute deviation still sees spread.
        mad = np.mean(dev) * 1.2533 / 1.4826
    if mad == 0:
        return np.zeros_like(values)
    return np.asarray(_MAD_SCALE * (values - med) / mad, dtype=np.float64)


def validate(ds: Dataset, th: ValidationThresholds | None = None) -> ValidationReport:
    th = th or ValidationThresholds()
    checks: list[CheckResult] = []
    X, y, names = ds.X, ds.y, ds.feature_names
    n = ds.n_rows

    # schema and dtypes
    if ds.type_errors:
        shown = "; ".join(f"line {ln} {col}={val!r}" for ln, col, val in ds.type_errors[:5])
        checks.append(
            CheckResult(
                "schema/dtypes", FAIL, f"{len(ds.type_errors)} non-numeric cell(s): {shown}"
            )
        )
    elif ds.extra_columns:
        checks.append(
            CheckResult(
                "schema/dtypes", WARN, f"ignored extra columns: {', '.join(ds.extra_columns)}"
            )
        )
    else:
        checks.append(
            CheckResult(
                "schema/dtypes", PASS, f"{len(names)} numeric features + label '{ds.label_name}'"
            )
        )

    checks.append(
        CheckResult(
            "row count",
            PASS if n >= th.min_rows else FAIL,
            f"{n} rows (minimum {th.min_rows})",
        )
    )
    if n == 0:
        return ValidationReport(rows=0, checks=checks)

    # missing values (type errors are reported above, not twice)
    type_error_cells = {(ln - 2, names.index(col)) for ln, col, _ in ds.type_errors}
    nan_mask = np.isnan(X)
    for r, c in type_error_cells:
        nan_mask[r, c] = False
    missing_labels = sum(1 for label in y if not label)
    missing_parts = [
        f"{names[j]}={int(nan_mask[:, j].sum())}" for j in range(len(names)) if nan_mask[:, j].any()
    ]
    if missing_labels:
        missing_parts.append(f"{ds.label_name}={missing_labels}")
    worst = max([nan_mask[:, j].mean() for j in range(len(names))] + [missing_labels / n])
    checks.append(
        CheckResult(
            "missing values",
            FAIL if worst > th.max_missing_fraction else (WARN if missing_parts else PASS),
            (", ".join(missing_parts) if missing_parts else "none")
            + f" (max fraction per column {th.max_missing_fraction:g})",
        )
    )

    complete = ~np.isnan(X).any(axis=1) & np.array([bool(label) for label in y])
    Xc = X[complete]
    yc = np.array(y, dtype=object)[complete]

    # value ranges
    bad = []
    for j, f in enumerate(names):
        lo, hi = th.range_for(f)
        col = X[:, j]
        finite = col[~np.isnan(col)]
        out = int(((finite < lo) | (finite > hi) | ~np.isfinite(finite)).sum())
        if out:
            bad.append(
                f"{f}: {out} outside [{lo:g}, {hi:g}] (seen {finite.min():g}..{finite.max():g})"
            )
    checks.append(
        CheckResult(
            "value ranges",
            FAIL if bad else PASS,
            "; ".join(bad) if bad else "all values within the plausible ranges",
        )
    )

    # duplicates
    if len(Xc):
        keys = [(*map(float, row), label) for row, label in zip(Xc, yc, strict=True)]
        dup_rows = len(keys) - len(set(keys))
        by_features: dict[tuple[float, ...], set[str]] = {}
        for row, label in zip(Xc, yc, strict=True):
            by_features.setdefault(tuple(map(float, row)), set()).add(str(label))
        conflicts = sum(1 for labels in by_features.values() if len(labels) > 1)
    else:
        dup_rows = conflicts = 0
    dup_frac = dup_rows / n
    status = PASS
    if dup_rows:
        status = WARN
    if dup_frac > th.max_duplicate_fraction or conflicts > th.max_conflicting_duplicates:
        status = FAIL
    checks.append(
        CheckResult(
            "duplicates",
            status,
            f"{dup_rows} duplicate row(s) ({dup_frac:.1%}, max {th.max_duplicate_fraction:.0%}), "
            f"{conflicts} feature vector(s) with conflicting labels "
            f"(max {th.max_conflicting_duplicates})",
        )
    )

    # class balance
    counts = Counter(str(v) for v in yc)
    if len(counts) < 2:
        checks.append(
            CheckResult("class balance", FAIL, f"need at least 2 classes, found {len(counts)}")
        )
    else:
        smallest, largest = min(counts.values()), max(counts.values())
        ratio = smallest / largest
        ok = smallest >= th.min_class_count and ratio >= th.min_class_ratio
        checks.append(
            CheckResult(
                "class balance",
                PASS if ok else FAIL,
                ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                + f"; smallest/largest {ratio:.2f} (min {th.min_class_ratio:g}), "
                f"smallest {smallest} (min {th.min_class_count})",
            )
        )

    # outliers: robust z-scores within each class (Iris features are multi-modal across
    # classes, so a global median would flag whole classes)
    if len(Xc) >= 3:
        flagged = np.zeros(len(Xc), dtype=bool)
        per_feature = Counter[str]()
        for label in counts:
            idx = np.flatnonzero(yc == label)
            if len(idx) < 3:
                continue
            for j, f in enumerate(names):
                z = _modified_z(Xc[idx, j])
                hit = idx[np.abs(z) > th.robust_z]
                flagged[hit] = True
                per_feature[f] += len(hit)
        frac = float(flagged.mean())
        detail = f"{int(flagged.sum())} row(s) ({frac:.1%}) with |robust z| > {th.robust_z:g}"
        if per_feature:
            detail += " [" + ", ".join(f"{f}={c}" for f, c in per_feature.items() if c) + "]"
        checks.append(
            CheckResult(
                "outliers (robust z)",
                FAIL if frac > th.max_outlier_fraction else (WARN if flagged.any() else PASS),
                detail + f", max {th.max_outlier_fraction:.0%}",
            )
        )

        from sklearn.ensemble import IsolationForest

        Xf = Xc[np.isfinite(Xc).all(axis=1)]
        if len(Xf) < 3:
            checks.append(
                CheckResult("outliers (IsolationForest)", FAIL, "fewer than 3 usable rows")
            )
            return ValidationReport(rows=n, checks=checks)
        iso = IsolationForest(n_estimators=200, random_state=th.random_state).fit(Xf)
        scores = -iso.score_samples(Xf)
        iso_flagged = scores > th.isolation_score
        iso_frac = float(iso_flagged.mean()) if len(Xf) else 0.0
        checks.append(
            CheckResult(
                "outliers (IsolationForest)",
                FAIL
                if iso_frac > th.max_isolation_fraction
                else (WARN if iso_flagged.any() else PASS),
                f"{int(iso_flagged.sum())} row(s) ({iso_frac:.1%}) with anomaly score > "
                f"{th.isolation_score:g} (highest {scores.max():.3f}), "
                f"max {th.max_isolation_fraction:.0%}",
            )
        )
    return ValidationReport(rows=n, checks=checks)


def feature_statistics(X: npt.NDArray[np.float64], names: list[str]) -> dict[str, Any]:
    """Per-feature training statistics stored in metadata.json (drift reference)."""
    from .drift import training_histogram

    stats: dict[str, Any] = {}
    for j, f in enumerate(names):
        col = X[:, j]
        stats[f] = {
            "count": int(col.size),
            "mean": float(col.mean()),
            "std": float(col.std(ddof=1)) if col.size > 1 else 0.0,
            "min": float(col.min()),
            "q01": float(np.quantile(col, 0.01)),
            "median": float(np.median(col)),
            "q99": float(np.quantile(col, 0.99)),
            "max": float(col.max()),
            "histogram": training_histogram(col),
        }
        assert all(math.isfinite(v) for v in stats[f]["histogram"]["edges"])
    return stats
