"""Each kind of bad training data is caught, reported, and stops training (exit 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_service.model.dataset import SchemaError, load_csv, load_iris_dataset, write_csv
from ml_service.model.validation import FAIL, PASS, ValidationThresholds, validate


def check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def csv_from_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def iris_text(X: np.ndarray, y: list[str]) -> str:
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [
        ",".join([*(repr(float(v)) for v in row), label]) for row, label in zip(X, y, strict=False)
    ]
    return "\n".join(lines) + "\n"


def test_clean_iris_passes() -> None:
    report = validate(load_iris_dataset())
    assert report.ok, report.format()
    assert check(report, "class balance").status == PASS


def test_csv_round_trip_is_clean(iris_csv: Path) -> None:
    ds = load_csv(iris_csv)
    assert ds.n_rows == 150 and validate(ds).ok


def test_missing_column_is_a_schema_error(tmp_path: Path) -> None:
    path = csv_from_text(tmp_path, "sepal_length,sepal_width,petal_length,species\n1,2,3,setosa\n")
    with pytest.raises(SchemaError, match=r"missing column.*petal_width"):
        load_csv(path)


def test_ragged_rows_are_a_schema_error(tmp_path: Path, iris_arrays) -> None:
    text = iris_text(*iris_arrays) + "1,2,3,4,setosa,extra\n"
    with pytest.raises(SchemaError, match="more cells"):
        load_csv(csv_from_text(tmp_path, text))


def test_non_numeric_value_fails_dtypes(tmp_path: Path, iris_arrays) -> None:
    text = iris_text(*iris_arrays).replace("5.1,3.5,1.4,0.2", "5.1,three,1.4,0.2", 1)
    report = validate(load_csv(csv_from_text(tmp_path, text)))
    assert check(report, "schema/dtypes").status == FAIL
    assert "line 2 sepal_width='three'" in check(report, "schema/dtypes").detail
    assert not report.ok


def test_missing_values_fail(tmp_path: Path, iris_arrays) -> None:
    X, y = iris_arrays
    X[[3, 40, 77], 2] = np.nan
    path = tmp_path / "d.csv"
    write_csv(path, X, y)
    report = validate(load_csv(path))
    assert check(report, "missing values").status == FAIL
    assert "petal_length=3" in check(report, "missing values").detail


def test_missing_labels_fail(tmp_path: Path, iris_arrays) -> None:
    X, y = iris_arrays
    y[5] = ""
    path = tmp_path / "d.csv"
    write_csv(path, X, y)
    assert check(validate(load_csv(path)), "missing values").status == FAIL


def test_missing_values_within_tolerance_pass(tmp_path: Path, iris_arrays) -> None:
    X, y = iris_arrays
    X[3, 2] = np.nan
    path = tmp_path / "d.csv"
    write_csv(path, X, y)
    report = validate(load_csv(path), ValidationThresholds(max_missing_fraction=0.05))
    assert check(report, "missing values").status != FAIL


@pytest.mark.parametrize("value", [-1.0, 99.0, np.inf])
def test_out_of_range_values_fail(tmp_path: Path, iris_arrays, value: float) -> None:
    X, y = iris_arrays
    X[10, 0] = value
    path = tmp_path / "d.csv"
    write_csv(path, X, y)
    report = validate(load_csv(path))
    assert check(report, "value ranges").status == FAIL
    assert "sepal_length: 1 outside" in check(report, "value ranges").detail


def test_per_feature_range_override(iris_arrays) -> None:
    ds = load_iris_dataset()
    th = ValidationThresholds(feature_ranges={"petal_width": (0.0, 2.0)})
    assert check(validate(ds, th), "value ranges").status == FAIL


def test_too_many_duplicates_fail(iris_arrays) -> None:
    ds = load_iris_dataset()
    ds.X = np.vstack([ds.X, ds.X[:12]])
    ds.y = ds.y + ds.y[:12]
    assert check(validate(ds), "duplicates").status == FAIL


def test_conflicting_duplicates_fail() -> None:
    ds = load_iris_dataset()
    ds.X = np.vstack([ds.X, ds.X[:1]])
    ds.y = [*ds.y, "virginica"]  # same measurements as a setosa, other label
    report = validate(ds)
    assert check(report, "duplicates").status == FAIL
    assert "1 feature vector(s) with conflicting labels" in check(report, "duplicates").detail


def test_class_imbalance_fails() -> None:
    ds = load_iris_dataset()
    keep = [i for i, label in enumerate(ds.y) if label != "virginica" or i % 10 == 0]
    ds.X, ds.y = ds.X[keep], [ds.y[i] for i in keep]
    assert check(validate(ds), "class balance").status == FAIL


def test_single_class_fails() -> None:
    ds = load_iris_dataset()
    ds.X, ds.y = ds.X[:50], ds.y[:50]
    assert check(validate(ds), "class balance").status == FAIL


def test_too_few_rows_fail() -> None:
    ds = load_iris_dataset()
    idx = [0, 1, 2, 50, 51, 52, 100, 101, 102]
    ds.X, ds.y = ds.X[idx], [ds.y[i] for i in idx]
    assert check(validate(ds), "row count").status == FAIL


def test_robust_z_outliers_fail() -> None:
    ds = load_iris_dataset()
    # In range, but absurd for the class: setosa petals as long as a virginica's.
    ds.X[0:10, 2] = 6.5
    report = validate(ds)
    assert check(report, "outliers (robust z)").status == FAIL
    assert "petal_length=10" in check(report, "outliers (robust z)").detail


def test_isolation_forest_outliers_fail() -> None:
    ds = load_iris_dataset()
    rng = np.random.default_rng(0)
    # Points far from every cluster in all four dimensions at once.
    extra = rng.uniform(12.0, 25.0, size=(12, 4))
    ds.X = np.vstack([ds.X, extra])
    ds.y = ds.y + ["setosa", "versicolor", "virginica"] * 4
    # Switch the per-class robust z check off to show the IsolationForest catches it alone.
    report = validate(ds, ValidationThresholds(max_outlier_fraction=1.0))
    assert check(report, "outliers (robust z)").status != FAIL
    assert check(report, "outliers (IsolationForest)").status == FAIL


def test_report_lists_every_problem_at_once(tmp_path: Path, iris_arrays) -> None:
    X, y = iris_arrays
    X[1, 1] = np.nan
    X[2, 3] = 50.0
    # versicolor shrinks to 25 rows against 125 setosa (ratio 0.2)
    y = [
        "setosa" if label == "virginica" or (label == "versicolor" and i % 2) else label
        for i, label in enumerate(y)
    ]
    path = tmp_path / "d.csv"
    write_csv(path, X, y)
    report = validate(load_csv(path))
    failed = {c.name for c in report.failures}
    assert {"missing values", "value ranges", "class balance"} <= failed
    text = report.format()
    assert "[FAIL] missing values" in text and "check(s) FAILED" in text
