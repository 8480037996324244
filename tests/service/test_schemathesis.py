"""schemathesis against the live API's OpenAPI document: all checks, fixed seed, 0 failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from service_support import RedisServer, Server, make_deployment
from signed_models import SigningKeys

from ml_service.tokens import key_id

HERE = Path(__file__).parent
SEED = 20261127
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def st_server(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    trained_models: Path,
    model_keys: SigningKeys,
) -> Iterator[Server]:
    high = {"limit": 1_000_000, "period_seconds": 1}
    limits = {
        role: {"predict": high, "read": high, "admin": high}
        for role in ("admin", "predictor", "viewer")
    }
    d = make_deployment(
        tmp_path_factory.mktemp("schemathesis"),
        redis_server,
        trained_models,
        model_keys,
        {"ML_SERVICE_KEY_PREFIX": "st", "ML_SERVICE_RATE_LIMITS": json.dumps(limits)},
    )
    server = Server(d, workers=1)
    server.start()
    yield server
    server.stop()


def test_schemathesis_all_checks(st_server: Server, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(
        st_server.deployment.signing_key.read_bytes(), password=None
    )
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "st_hooks",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "ST_SIGNING_KEY": str(st_server.deployment.signing_key),
        "ST_KID": key_id(key.public_key()),  # type: ignore[arg-type]
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{st_server.url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            # one worker: CPython 3.11.7's ast.parse (used by hypothesis) is not thread-safe
            "--workers",
            "1",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        env=env,
        cwd=tmp_path,  # schemathesis keeps a cache directory in its working directory
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "passed" in output.lower()
