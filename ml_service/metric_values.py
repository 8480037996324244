"""Multiprocess metric values that do not ask the kernel for the PID on every increment.

prometheus_client's multiprocess values call ``os.getpid()`` on every ``inc``/``set`` to notice
a fork (a forked child must not write into its parent's file). The service's workers are
started by uvicorn with ``spawn``, and nothing forks a worker that keeps serving; the PID is
kept here instead and renewed in any forked child (``os.register_at_fork``), which is the rule
``MultiProcessValue(process_identifier=...)`` asks of its function: distinct values in
processes running at the same time. Imported by both metrics modules before they define a
metric.
"""

from __future__ import annotations

import os

from prometheus_client import values

_pid = [os.getpid()]


def _renew() -> None:
    _pid[0] = os.getpid()


def _process_identifier() -> int:
    return _pid[0]


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.register_at_fork(after_in_child=_renew)
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
