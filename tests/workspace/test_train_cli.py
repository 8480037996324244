"""train_model.py end to end: keygen, train, exit codes, metadata, quality gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml_service.model import ModelRegistry
from ml_service.model.dataset import load_iris_dataset, write_csv
from ml_service.model.training import QualityGateError, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
FAST = ["--n-estimators", "10", "--cv-folds", "3"]


@pytest.fixture
def keys(tmp_path: Path, train_cli) -> Path:
    assert train_cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


# Each sub-command's help names what only that sub-command has: the script really dispatched.
HELP_MARKERS = {
    (): ("usage: train_model.py [-h] {keygen,validate,train}", "quality gate"),
    ("train",): ("usage: train_model.py train", "--max-outlier-fraction", "--signing-key"),
    ("keygen",): ("usage: train_model.py keygen", "--stem STEM"),
}


@pytest.mark.parametrize("command", list(HELP_MARKERS), ids=lambda c: " ".join(c) or "top")
def test_help_runs_as_a_script(command: tuple[str, ...]) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "workspace" / "train_model.py"), *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    for marker in HELP_MARKERS[command]:
        assert marker in out.stdout, (marker, out.stdout)


def test_keygen_modes_and_no_overwrite(tmp_path: Path, train_cli, capsys) -> None:
    keys = tmp_path / "k"
    assert train_cli.main(["keygen", "--out", str(keys)]) == 0
    assert (keys / "model-signing.key").stat().st_mode & 0o777 == 0o600
    assert (keys / "model-signing.pub").stat().st_mode & 0o777 == 0o644
    assert "key id:      sha256:" in capsys.readouterr().out
    assert train_cli.main(["keygen", "--out", str(keys)]) == 1


def test_group_readable_private_key_is_refused(keys: Path, tmp_path: Path, train_cli) -> None:
    os.chmod(keys / "model-signing.key", 0o640)
    rc = train_cli.main(
        [
            "train",
            "--out",
            str(tmp_path / "m"),
            "--signing-key",
            str(keys / "model-signing.key"),
            *FAST,
        ]
    )
    assert rc == 1
    assert not (tmp_path / "m" / "iris").exists() or not any((tmp_path / "m" / "iris").iterdir())


def test_train_writes_a_verifiable_version(keys: Path, tmp_path: Path, train_cli, capsys) -> None:
    out = tmp_path / "models"
    rc = train_cli.main(
        ["train", "--out", str(out), "--signing-key", str(keys / "model-signing.key"), *FAST]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "hold-out accuracy" in captured.out and "[PASS] class balance" in captured.out
    assert "[train] fitting RandomForest" in captured.err
    model = ModelRegistry(out, "iris", keys).load()
    md = model.metadata
    for key in ("version", "trained_at", "params", "metrics", "confusion_matrix", "libraries"):
        assert key in md
    assert md["version"] == model.version
    assert md["data"]["sha256"] == load_iris_dataset().sha256
    assert md["params"]["n_estimators"] == 10
    assert md["libraries"]["scikit-learn"]
    assert np.array(md["confusion_matrix"]["matrix"]).sum() == md["metrics"]["holdout_rows"]
    hist = md["feature_stats"]["petal_length"]["histogram"]
    assert len(hist["proportions"]) == len(hist["edges"]) - 1
    assert abs(sum(hist["proportions"]) - 1.0) < 1e-9
    manifest = json.loads((out / "iris" / model.version / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.joblib", "metadata.json"}


def test_bad_csv_exits_3_and_writes_nothing(
    keys: Path, tmp_path: Path, iris_arrays, train_cli, capsys
) -> None:
    X, y = iris_arrays
    X[0:10, 2] = 6.5
    X[20, 0] = -3
    data = tmp_path / "bad.csv"
    write_csv(data, X, y)
    out = tmp_path / "models"
    rc = train_cli.main(
        [
            "train",
            "--out",
            str(out),
            "--signing-key",
            str(keys / "model-signing.key"),
            "--data",
            str(data),
            *FAST,
        ]
    )
    captured = capsys.readouterr()
    assert rc == 3
    assert "[FAIL] value ranges" in captured.out
    assert "[FAIL] outliers (robust z)" in captured.out
    assert "training data failed validation" in captured.err and "no model written" in captured.err
    assert not (out / "iris").exists()


def test_missing_column_exits_3(keys: Path, tmp_path: Path, train_cli, capsys) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("a,b,c\n1,2,3\n")
    rc = train_cli.main(["validate", "--data", str(data)])
    assert rc == 3
    assert "missing column" in capsys.readouterr().err


def test_thresholds_are_configurable(tmp_path: Path, iris_arrays, train_cli, capsys) -> None:
    X, y = iris_arrays
    X[0:10, 2] = 6.5
    data = tmp_path / "d.csv"
    write_csv(data, X, y)
    assert train_cli.main(["validate", "--data", str(data)]) == 3
    assert train_cli.main(["validate", "--data", str(data), "--max-outlier-fraction", "0.1"]) == 0
    assert train_cli.main(["validate", "--feature-range", "petal_width=0:2"]) == 3
    capsys.readouterr()


def shuffled_iris():
    ds = load_iris_dataset()
    _, first = np.unique(ds.X, axis=0, return_index=True)  # drop the one duplicate row
    keep = np.sort(first)
    rng = np.random.default_rng(0)
    ds.X = ds.X[keep]
    ds.y = list(rng.permutation(np.array(ds.y)[keep]))
    return ds


def test_quality_gate_refuses_a_model_trained_on_shuffled_labels() -> None:
    with pytest.raises(QualityGateError) as info:
        train(shuffled_iris(), TrainConfig(n_estimators=10, cv_folds=3), progress=lambda m: None)
    assert info.value.metrics["holdout_accuracy"] < 0.6
    assert any("accuracy" in f for f in info.value.failures)


def test_quality_gate_cli_exits_4(keys: Path, tmp_path: Path, train_cli, capsys) -> None:
    ds = shuffled_iris()
    data = tmp_path / "shuffled.csv"
    write_csv(data, ds.X, ds.y)
    out = tmp_path / "models"
    rc = train_cli.main(
        [
            "train",
            "--out",
            str(out),
            "--signing-key",
            str(keys / "model-signing.key"),
            "--data",
            str(data),
            *FAST,
        ]
    )
    assert rc == 4
    assert "failed the quality gate" in capsys.readouterr().err
    assert not (out / "iris").exists() or not any((out / "iris").iterdir())


def test_fold_variance_gate() -> None:
    cfg = TrainConfig(n_estimators=10, cv_folds=3, max_cv_std=0.0001)
    with pytest.raises(QualityGateError, match="std"):
        train(load_iris_dataset(), cfg, progress=lambda m: None)


def test_tolerated_missing_values_are_dropped_before_training(tmp_path: Path) -> None:
    ds = load_iris_dataset()
    ds.X[[5, 60, 120], 1] = np.nan
    cfg = TrainConfig(n_estimators=10, cv_folds=3)
    cfg.thresholds.max_missing_fraction = 0.05
    result = train(ds, cfg, progress=lambda m: None)
    assert result.dataset.n_rows == 147
    from ml_service.model.validation import feature_statistics

    stats = feature_statistics(result.dataset.X, result.dataset.feature_names)
    assert stats["sepal_width"]["count"] == 147
