"""Run wrk against a local URL and read its report (requests/s, p50, p99, max, errors)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    assert m, value
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def post_script(path: Path, body: str, token: str) -> Path:
    """A wrk Lua script (wrk.method, wrk.body, wrk.headers): POST ``body`` as JSON with the
    bearer ``token``."""
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


def run_wrk(
    url: str,
    script: Path | None,
    connections: int,
    duration: int | float,
    cpus: str | None = None,
) -> dict[str, float]:
    """``wrk --latency`` on ``url`` (with a Lua ``script`` if given); figures in ms.

    ``cpus`` pins wrk (``taskset -c``), so it does not compete with the server it measures.
    """
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, duration)


def parse_wrk(out: str, duration: int | float) -> dict[str, float]:
    """The figures of one ``wrk --latency`` report (``duration``: for a report without a count)."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": _ms(latency.group(1)) if latency else float("nan"),
        "requests": float(total.group(1)) if total else rps * duration,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }
