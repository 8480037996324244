"""The gRPC route to the API (Open Inference Protocol): HTTP/2 with TLS at the edge, h2c inside."""

from __future__ import annotations

from pathlib import Path

from test_traefik_config import _merged_http, rendered  # noqa: F401  (the module's fixture)


def test_grpc_calls_to_the_api_host_go_to_the_h2c_listener(rendered: dict[str, Path]) -> None:  # noqa: F811
    http = _merged_http(rendered["defaults"])
    router = http["routers"]["api-grpc"]
    assert router["rule"] == (
        "Host(`api.localhost`) && HeaderRegexp(`Content-Type`, `^application/grpc`)"
    )
    # Traefik's default priority is the rule's length: gRPC wins over the plain API route.
    assert len(router["rule"]) > len(http["routers"]["api"]["rule"])
    assert router["entryPoints"] == ["websecure", "ide"] and router["tls"]
    service = http["services"][router["service"]]["loadBalancer"]
    assert service["servers"] == [{"url": "h2c://ml-api:8001"}]
    # Probed over HTTP on the REST port: the gRPC server has no HTTP/1 readiness path.
    assert service["healthCheck"] == {
        "scheme": "http",
        "port": 8000,
        "path": "/v2/health/ready",
        "interval": "2s",
        "timeout": "1s",
    }
