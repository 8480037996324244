"""Training data: Iris bundled with scikit-learn, or a CSV file.

Reading is deliberately lenient (cells that are not numbers become NaN and are
recorded), so that validation can report *every* problem at once instead of
stopping at the first bad cell.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_LABEL = "species"
MISSING_TOKENS = {"", "na", "n/a", "nan", "null", "none", "?"}


class SchemaError(ValueError):
    """The data cannot even be read as a table of the expected columns."""


@dataclass
class Dataset:
    X: npt.NDArray[np.float64]  # (n, n_features); NaN where missing or not a number
    y: list[str]  # "" where missing
    feature_names: list[str]
    label_name: str
    source: str
    sha256: str
    # (row number in the file, column, raw value) of cells that are not numbers
    type_errors: list[tuple[int, str, str]] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def _canonical_csv(
    X: npt.NDArray[np.float64], y: list[str], features: list[str], label: str
) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*features, label])
    for row, target in zip(X, y, strict=True):
        writer.writerow([repr(float(v)) for v in row] + [target])
    return buf.getvalue().encode()


def load_iris_dataset() -> Dataset:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = [str(bunch.target_names[t]) for t in bunch.target]
    data = _canonical_csv(X, y, IRIS_FEATURES, IRIS_LABEL)
    return Dataset(
        X=X,
        y=y,
        feature_names=list(IRIS_FEATURES),
        label_name=IRIS_LABEL,
        source="sklearn.datasets.load_iris",
        sha256=hashlib.sha256(data).hexdigest(),
    )


def write_csv(
    path: Path,
    X: npt.NDArray[np.float64],
    y: list[str],
    features: list[str] | None = None,
    label: str = IRIS_LABEL,
) -> None:
    path.write_bytes(_canonical_csv(X, y, features or IRIS_FEATURES, label))


def _parse_number(raw: str) -> float | None:
    """float, NaN for a missing marker, None for something that is not a number."""
    text = raw.strip()
    if text.lower() in MISSING_TOKENS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def load_csv(
    path: Path, feature_names: list[str] | None = None, label_name: str = IRIS_LABEL
) -> Dataset:
    features = list(feature_names or IRIS_FEATURES)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path} is not UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise SchemaError(f"{path} has no header row")
    reader.fieldnames = header
    missing_cols = [c for c in [*features, label_name] if c not in header]
    if missing_cols:
        raise SchemaError(
            f"{path}: missing column(s) {', '.join(missing_cols)}; "
            f"expected {', '.join([*features, label_name])}, found {', '.join(header)}"
        )
    if len(set(header)) != len(header):
        raise SchemaError(f"{path}: duplicate column names in the header")
    rows: list[list[float]] = []
    labels: list[str] = []
    type_errors: list[tuple[int, str, str]] = []
    for line_no, record in enumerate(reader, start=2):
        if None in record:
            raise SchemaError(f"{path}:{line_no}: more cells than header columns")
        values = []
        for col in features:
            cell = record.get(col)
            parsed = _parse_number(cell if cell is not None else "")
            if parsed is None:
                type_errors.append((line_no, col, str(cell)[:40]))
                parsed = math.nan
            values.append(parsed)
        rows.append(values)
        label = (record.get(label_name) or "").strip()
        labels.append("" if label.lower() in MISSING_TOKENS else label)
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(features))
    return Dataset(
        X=X,
        y=labels,
        feature_names=features,
        label_name=label_name,
        source=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
        type_errors=type_errors,
        extra_columns=[c for c in header if c not in (*features, label_name)],
    )
