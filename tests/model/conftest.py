"""Fixtures: one signing key pair and a few trained versions per session, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from signed_models import SigningKeys, make_keys, make_signed_model


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    """A valid key pair that the service does NOT trust."""
    return make_keys(tmp_path_factory.mktemp("untrusted-keys"))


@pytest.fixture(scope="session")
def session_models(tmp_path_factory: pytest.TempPathFactory, session_keys: SigningKeys) -> Path:
    """Two versions (v_old, v_new) of 'iris' built once; tests get their own copy."""
    model_dir = tmp_path_factory.mktemp("models")
    make_signed_model(model_dir, session_keys, random_state=1)
    make_signed_model(model_dir, session_keys, random_state=2)
    return model_dir


@pytest.fixture
def model_dir(tmp_path: Path, session_models: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(session_models, target)
    return target


@pytest.fixture
def versions(model_dir: Path) -> list[str]:
    """Version names, oldest first."""
    return sorted(p.name for p in (model_dir / "iris").iterdir() if p.is_dir())


@pytest.fixture
def trusted_dir(tmp_path: Path, session_keys: SigningKeys) -> Path:
    target = tmp_path / "trusted"
    target.mkdir()
    shutil.copy(session_keys.public_key, target / "current.pub")
    return target
