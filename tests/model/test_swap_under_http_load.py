"""Activation and rollback through the admin API while clients hammer /predict on two
workers: zero failed requests, and both workers end on the activated version."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workspace"))
from smoke_stack import ADMIN, ADMIN_PASSWORD, PASSWORD, USER, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    unlimited = {"limit": 1_000_000, "period_seconds": 1}
    s = Stack(
        tmp_path_factory.mktemp("swap"),
        tls=False,
        n_versions=2,
        workers=2,
        extra_env={
            "ML_SERVICE_USER_RATE_LIMITS": json.dumps(
                {u: {"predict": unlimited, "admin": unlimited} for u in (USER, ADMIN)}
            ),
            "ML_SERVICE_MODEL_REFRESH_SECONDS": "0.5",
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def token(base: str, user: str, password: str) -> str:
    r = httpx.post(f"{base}/token", data={"username": user, "password": password}, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_swaps_under_load_fail_no_request(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.http_port}"
    old, new = stack.versions
    predictor = {"Authorization": f"Bearer {token(base, USER, PASSWORD)}"}
    admin = {"Authorization": f"Bearer {token(base, ADMIN, ADMIN_PASSWORD)}"}
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base, headers=predictor, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"features": [6.1, 2.8, 4.7, 1.2]})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                with lock:
                    seen[r.json()["model_version"]] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    swaps = 0
    try:
        with httpx.Client(base_url=base, headers=admin, timeout=30) as c:
            for _ in range(12):  # a fixed count, not a time budget: the machine may be loaded
                r = c.post(f"/admin/models/{old}/activate")
                assert r.status_code == 200, r.text
                time.sleep(0.3)
                r = c.post("/admin/models/rollback")
                assert r.status_code == 200, r.text
                assert r.json()["version"] == new
                time.sleep(0.3)
                swaps += 2
            r = c.post(f"/admin/models/{old}/activate")
            assert r.status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert swaps == 24
    assert seen[old] > 0 and seen[new] > 0 and set(seen) == {old, new}
    # Both workers follow the pointer within a refresh period or two.
    time.sleep(2)
    with httpx.Client(base_url=base, headers=predictor, timeout=10) as c:
        versions = {
            c.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}).json()["model_version"]
            for _ in range(40)
        }
    assert versions == {old}
