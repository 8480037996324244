"""Prometheus metrics with 2 workers: counts add up across processes; access is protected."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service_support import ROW, Server, bearer

N = 40


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(server.url + "/metrics", headers=bearer(server.deployment.metrics_token))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


def test_counts_add_up_across_workers(server: Server, tokens: dict[str, str]) -> None:
    before = scrape(server)
    classes: dict[str, int] = {}
    version = ""
    # New connection per request, so both workers serve a share.
    with httpx.Client(base_url=server.url, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for i in range(N):
            row = ROW if i % 2 else [6.7, 3.0, 5.2, 2.3]
            body = c.post(
                "/predict", json={"features": row}, headers=bearer(tokens["predictor"])
            ).json()
            classes[body["class_name"]] = classes.get(body["class_name"], 0) + 1
            version = body["model_version"]
        c.post("/predict", json={"features": [1, 2, 3]}, headers=bearer(tokens["predictor"]))
    after = scrape(server)
    ok = {"route": "/predict", "method": "POST", "status": "200"}
    assert (
        total(after, "ml_api_requests_total", **ok) - total(before, "ml_api_requests_total", **ok)
        == N
    )
    bad = {"route": "/predict", "method": "POST", "status": "422"}
    assert (
        total(after, "ml_api_requests_total", **bad) - total(before, "ml_api_requests_total", **bad)
        == 1
    )
    for name, count in classes.items():
        labels = {"class_name": name, "model_version": version}
        delta = total(after, "ml_api_predictions_total", **labels) - total(
            before, "ml_api_predictions_total", **labels
        )
        assert delta == count, name
    hist = "ml_api_request_duration_seconds_count"
    assert total(after, hist, route="/predict") - total(before, hist, route="/predict") == N + 1
    pids = {dict(ls).get("pid") for (n, ls) in after if n == "ml_api_requests_total"}
    assert pids == {None}  # merged, not per-process series
    info = [(dict(ls), v) for (n, ls), v in after.items() if n == "ml_model_info" and v == 1]
    assert [lbl["version"] for lbl, _ in info] == [version]
    assert len(info[0][0]["sha256"]) == 64
    assert after[("ml_api_redis_up", ())] == 1


def test_metrics_access(server: Server, tokens: dict[str, str]) -> None:
    url = server.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer("not-the-scrape-token-" + "x" * 30)).status_code == 401
    assert httpx.get(url, headers=bearer(tokens["viewer"])).status_code == 200
    assert httpx.get(url, headers=bearer(tokens["admin"])).status_code == 200
    r = httpx.get(url, headers=bearer(tokens["predictor"]))
    assert r.status_code == 403 and r.json()["error"]["missing_permission"] == "metrics:read"
