"""Activation and rollback through the admin API while clients hammer /predict on two
workers: zero failed requests, each worker performs swaps itself and follows the other's,
and every worker serves each newly activated version before the next swap."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workspace"))
from smoke_stack import ADMIN, ADMIN_PASSWORD, PASSWORD, USER, Stack
from workers import EXPOSE_WORKER_ENV, fresh, until_every_worker, worker_of

# Dozens of swaps, each followed by both workers, plus a 2-worker start: minutes when the
# machine is loaded.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


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
            **EXPOSE_WORKER_ENV,
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


ROW = {"features": [5.1, 3.5, 1.4, 0.2]}


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
    seen: Counter[tuple[str, str]] = Counter()  # (worker, version) of the load's answers
    lock = threading.Lock()

    def client() -> None:
        # A new connection every so often: which worker accepts one is the kernel's choice, and
        # a worker fast enough to be back in accept() first can take all eight at once.
        while not stop.is_set():
            with httpx.Client(base_url=base, headers=predictor, timeout=30) as c:
                for _ in range(100):
                    if stop.is_set():
                        break
                    try:
                        r = c.post("/predict", json={"features": [6.1, 2.8, 4.7, 1.2]})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    with lock:
                        seen[worker_of(r), r.json()["model_version"]] += 1

    def all_serve(version: str) -> None:
        until_every_worker(
            lambda: fresh("POST", base + "/predict", json=ROW, headers=predictor),
            stack.workers,
            lambda r: r.status_code == 200 and r.json()["model_version"] == version,
            f"every worker serves {version}",
        )

    def swap(path: str, expected: str) -> str:
        r = fresh("POST", base + path, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == expected
        all_serve(expected)
        return worker_of(r)

    swapped_by: Counter[str] = Counter()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        # At least 6 round trips; more until each worker has made swaps itself (which one
        # answers a new connection is the kernel's choice), bounded.
        for n in range(40):
            if n >= 6 and len(swapped_by) == stack.workers and min(swapped_by.values()) >= 2:
                break
            swapped_by[swap(f"/admin/models/{old}/activate", old)] += 1
            swapped_by[swap("/admin/models/rollback", new)] += 1
        swapped_by[swap(f"/admin/models/{old}/activate", old)] += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(swapped_by) == stack.workers, swapped_by
    assert min(swapped_by.values()) >= 2, swapped_by
    # The load itself reached every worker on both versions.
    assert {w for w, _ in seen} and all(
        seen[w, v] > 0 for w in {w for w, _ in seen} for v in (old, new)
    ), seen
    assert len({w for w, _ in seen}) == stack.workers, seen
    # The service's own count of swaps: one audit record per admin call, all successful.
    records = [json.loads(x) for x in (stack.root / "audit.log").read_text().splitlines()]
    done = [x for x in records if x["action"] in ("models.activate", "models.rollback")]
    assert [x["status"] for x in done] == [200] * sum(swapped_by.values())
