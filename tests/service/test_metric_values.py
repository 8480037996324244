"""The multiprocess metric values keep their PID without asking the kernel on every increment
(ml_service/metric_values.py): a forked child must still count in a file of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os, sys
import ml_service.metrics as metrics
from prometheus_client import CollectorRegistry, multiprocess

def total():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry.get_sample_value(
        "ml_api_requests_total", {"route": "/t", "method": "GET", "status": "200"}
    )

metrics.observe_request("/t", "GET", 200, 0.001)
pid = os.fork()
if pid == 0:
    metrics.observe_request("/t", "GET", 200, 0.001)
    os._exit(0)
os.waitpid(pid, 0)
metrics.observe_request("/t", "GET", 200, 0.001)
print(total(), len([f for f in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
                    if f.startswith("counter_")]))
"""


def test_a_forked_child_counts_in_its_own_file(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    total, files = out.stdout.split()
    # Parent, child, parent: three requests in two files. Had the child written into the
    # parent's file, the parent's next write would have overwritten the child's count.
    assert (float(total), int(files)) == (3.0, 2)
