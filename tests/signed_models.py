"""Signed models in a few lines, for the tests and the benchmarks; here, not in ml_service/,
so that the image (every .py of ml_service/) does not ship them.

keys = make_keys(tmp_path / "keys")
version_dir = make_signed_model(tmp_path / "models", keys)          # fast: 10 trees
registry = ModelRegistry(tmp_path / "models", "iris", keys.trusted_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ml_service.model.signing import generate_keypair
from ml_service.model.training import TrainConfig, train_to_registry


@dataclass(frozen=True)
class SigningKeys:
    private_key: Path
    public_key: Path
    key_id: str

    @property
    def trusted_dir(self) -> Path:
        return self.public_key.parent


def make_keys(directory: Path, stem: str = "model-signing") -> SigningKeys:
    private, public, kid = generate_keypair(directory, stem)
    return SigningKeys(private, public, kid)


def make_signed_model(
    model_dir: Path,
    keys: SigningKeys,
    name: str = "iris",
    n_estimators: int = 10,
    random_state: int = 42,
) -> Path:
    """Train on Iris in-process (well under a second) and write a signed version."""
    cfg = TrainConfig(name=name, n_estimators=n_estimators, cv_folds=3, random_state=random_state)
    return train_to_registry(model_dir, keys.private_key, cfg, progress=lambda _msg: None)
