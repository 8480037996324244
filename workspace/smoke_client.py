#!/usr/bin/env python3
"""Post-deploy smoke test of the ML API: token -> predict -> model info.

    python workspace/smoke_client.py --base-url https://api.localhost \\
        --ca-file /etc/appliance/ca.pem --username alice --password-file ~/.alice-pw

Password: --password-file, else the environment variable ML_CLIENT_PASSWORD, else
--password-stdin, else an interactive prompt (never a command-line argument).
Standard library only, so it runs on any host with Python 3.11+.
--connect-to HOST:PORT sends the connection elsewhere while keeping the URL's host
name for TLS (SNI, certificate check) and the Host header, like curl's --connect-to.
Exit status: 0 all checks passed, 1 a check failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import math
import os
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FEATURES = [5.1, 3.5, 1.4, 0.2]  # Iris row 1, a setosa


class SmokeTestError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise SmokeTestError(
                f"HTTP {self.status}: response is not JSON: {self.body[:200]!r}"
            ) from None


class _RedirectedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``connect_to`` while TLS verifies the URL's host name."""

    def __init__(self, host: str, port: int, connect_to: tuple[str, int], **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self._connect_to = connect_to

    def connect(self) -> None:
        sock = socket.create_connection(self._connect_to, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _RedirectedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, connect_to: tuple[str, int], **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self._connect_to = connect_to

    def connect(self) -> None:
        self.sock = socket.create_connection(self._connect_to, self.timeout)


class Client:
    def __init__(
        self,
        base_url: str,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        connect_to: tuple[str, int] | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path
        self.timeout = timeout
        self.connect_to = connect_to
        self.context: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            if self.connect_to:
                return _RedirectedHTTPSConnection(
                    self.host,
                    self.port,
                    self.connect_to,
                    timeout=self.timeout,
                    context=self.context,
                )
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.context
            )
        if self.connect_to:
            return _RedirectedHTTPConnection(
                self.host, self.port, self.connect_to, timeout=self.timeout
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = self._connection()
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        except ssl.SSLCertVerificationError as exc:
            raise SmokeTestError(
                f"TLS certificate of {self.host} not trusted ({exc.verify_message}); "
                "pass the CA with --ca-file"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SmokeTestError(
                f"{method} {path}: cannot reach {self.host}:{self.port}: {exc}"
            ) from None
        finally:
            conn.close()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def _expect(resp: Response, status: int, what: str) -> Any:
    if resp.status != status:
        detail = resp.body[:300].decode(errors="replace")
        raise SmokeTestError(f"{what}: expected HTTP {status}, got {resp.status}: {detail}")
    return resp.json()


def get_token(client: Client, username: str, password: str) -> str:
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()
    data = _expect(
        client.request(
            "POST",
            "/token",
            form,
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        ),
        200,
        "POST /token",
    )
    if data.get("token_type", "").lower() != "bearer" or not data.get("access_token"):
        raise SmokeTestError(f"POST /token: unexpected response fields {sorted(data)}")
    return str(data["access_token"])


def predict(client: Client, token: str, features: list[float]) -> dict[str, Any]:
    body = json.dumps({"features": features}).encode()
    data = _expect(
        client.request(
            "POST",
            "/predict",
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ),
        200,
        "POST /predict",
    )
    probabilities = data.get("probabilities")
    if isinstance(probabilities, dict):
        values = list(probabilities.values())
    elif isinstance(probabilities, list):
        values = probabilities
    else:
        raise SmokeTestError(f"POST /predict: no probabilities in {data}")
    if not values or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise SmokeTestError(f"POST /predict: probabilities do not sum to 1: {probabilities}")
    for key in ("class_name", "model_version", "request_id"):
        if key not in data:
            raise SmokeTestError(f"POST /predict: response lacks {key!r}: {data}")
    return dict(data)


def model_info(client: Client, token: str) -> dict[str, Any]:
    data = _expect(
        client.request("GET", "/model/info", headers={"Authorization": f"Bearer {token}"}),
        200,
        "GET /model/info",
    )
    for key in ("name", "version", "sha256", "class_names"):
        if key not in data:
            raise SmokeTestError(f"GET /model/info: response lacks {key!r}")
    return dict(data)


def run(
    client: Client,
    username: str,
    password: str,
    features: list[float],
    expect_class: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    token = get_token(client, username, password)
    prediction = predict(client, token, features)
    info = model_info(client, token)
    if prediction["model_version"] != info["version"]:
        # A swap between the two calls is legal but rare; say so rather than fail.
        print(
            f"note: predicted with {prediction['model_version']}, info shows {info['version']}",
            file=sys.stderr,
        )
    if prediction["class_name"] not in info["class_names"]:
        raise SmokeTestError(f"predicted class {prediction['class_name']!r} not in model classes")
    if expect_class is not None and prediction["class_name"] != expect_class:
        raise SmokeTestError(
            f"predicted {prediction['class_name']!r} for {features}, expected {expect_class!r}"
        )
    return {
        "prediction": prediction,
        "model": info,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    if os.environ.get("ML_CLIENT_PASSWORD"):
        return os.environ["ML_CLIENT_PASSWORD"]
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return getpass.getpass(f"password for {args.username}: ")


def _features(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 4 comma-separated numbers, got {text!r}"
        ) from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 4 finite numbers, got {text!r}")
    return values


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smoke_client.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base-url", default="https://api.localhost", help="default: %(default)s")
    p.add_argument("--ca-file", type=Path, help="CA certificate (PEM) to trust for HTTPS")
    p.add_argument(
        "--connect-to",
        type=_host_port,
        metavar="HOST:PORT",
        help="connect here instead of the URL's host (TLS still checks the URL's name)",
    )
    p.add_argument("--username", required=True)
    p.add_argument("--password-file", type=Path, help="file holding the password")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--features",
        type=_features,
        default=DEFAULT_FEATURES,
        help="4 comma-separated numbers (default: a setosa, 5.1,3.5,1.4,0.2)",
    )
    p.add_argument("--expect-class", help="fail unless this class name is predicted")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(args.base_url, args.ca_file, args.timeout, args.connect_to)
        result = run(client, args.username, _password(args), args.features, args.expect_class)
    except (SmokeTestError, OSError, ValueError, ssl.SSLError) as exc:
        print(f"SMOKE TEST FAILED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    pred, info = result["prediction"], result["model"]
    print(f"OK  {args.base_url}  ({result['seconds']} s)")
    print(f"  prediction  {pred['class_name']}  for {args.features}")
    print(f"  probs       {pred['probabilities']}")
    print(f"  request id  {pred['request_id']}")
    print(f"  model       {info['name']} {info['version']}  backend {info.get('backend', '?')}")
    print(f"  sha256      {info['sha256']}")
    if info.get("trained_at"):
        print(f"  trained at  {info['trained_at']}")
    metrics = info.get("metrics") or {}
    if "holdout_accuracy" in metrics:
        print(f"  accuracy    {metrics['holdout_accuracy']:.4f} (hold-out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
