"""Load workspace/train_model.py as a module (workspace/ is scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.datasets import load_iris

from ml_service.model.dataset import write_csv

WORKSPACE = Path(__file__).resolve().parents[2] / "workspace"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"workspace_{name}", WORKSPACE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_cli() -> ModuleType:
    return _load("train_model")


@pytest.fixture(scope="session")
def smoke_cli() -> ModuleType:
    return _load("smoke_client")


@pytest.fixture
def iris_arrays() -> tuple[np.ndarray, list[str]]:
    bunch = load_iris()
    return bunch.data.copy(), [str(bunch.target_names[t]) for t in bunch.target]


@pytest.fixture
def iris_csv(tmp_path: Path, iris_arrays) -> Path:
    path = tmp_path / "iris.csv"
    write_csv(path, *iris_arrays)
    return path
