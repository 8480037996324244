"""The per-worker service objects and their background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import numpy as np
import numpy.typing as npt

from . import metrics
from .audit import AuditLog
from .model import (
    LoadedModel,
    ModelIntegrityError,
    ModelRegistry,
    NoModelError,
    PredictionMonitor,
)
from .redis_state import RedisState
from .schemas import RequestModels
from .settings import Settings
from .tokens import TokenService
from .users import UserStore, make_hasher

log = logging.getLogger("ml_service")
T = TypeVar("T")

# argon2 with 64 MiB per hash: a bound on concurrent hashes is a bound on memory.
_MAX_CONCURRENT_HASHES = 4


class HashQueueFull(Exception):
    pass


class HashQueue:
    """Password hashes of one worker: ``running`` at once, at most ``waiting`` queued behind
    them; a login beyond that is refused at once instead of queueing without bound."""

    def __init__(self, running: int, waiting: int) -> None:
        self._limiter = anyio.CapacityLimiter(running)
        self._capacity = running + waiting
        self._inside = 0  # only the event loop's thread touches it

    async def run(self, func: Callable[..., T], *args: object) -> T:
        if self._inside >= self._capacity:
            raise HashQueueFull
        self._inside += 1
        try:
            metrics.LOGIN_HASHES.inc()
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
        finally:
            self._inside -= 1


def model_info_body(model: LoadedModel) -> dict[str, object]:
    """The body of ``GET /model/info`` (and of the admin activation answers)."""
    md = model.metadata
    return {
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "backend": model.backend,
        "trained_at": md.get("trained_at"),
        "metrics": md.get("metrics") or {},
        "feature_names": list(model.feature_names),
        "class_names": list(model.class_names),
    }


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = TokenService(settings)
        self.users = UserStore(settings.users_file, make_hasher(settings))
        self.audit = AuditLog(settings.audit_log)
        self.redis = RedisState(settings)
        self.models = RequestModels(settings)
        self.registry = ModelRegistry(
            settings.model_dir,
            settings.model_name,
            settings.trusted_keys_dir,
            on_integrity_failure=self._integrity_failure,
        )
        self.monitor = PredictionMonitor(feedback_window=settings.feedback_window)
        self.hashes = HashQueue(_MAX_CONCURRENT_HASHES, settings.login_hash_queue)
        self._tasks: list[asyncio.Task[None]] = []

    def _integrity_failure(self, version: str, reason: str) -> None:
        log.error("model version %s refused: %s", version, reason)
        self.audit.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": None,
                "user": None,
                "role": None,
                "client_ip": None,
                "action": "model.integrity_check",
                "outcome": "refused",
                "status": None,
                "model_version": version,
                "latency_ms": None,
                "detail": reason,
            }
        )

    async def predict(
        self, model: LoadedModel, X: npt.NDArray[np.float64], request_id: str
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
        """Class probabilities and indices for the rows of ``X``, with the side effects every
        prediction has (metrics, drift monitor, the record /feedback looks up)."""
        if model.backend == "sklearn":
            # scikit-learn's predict_proba takes milliseconds; keep the event loop free.
            probas = await anyio.to_thread.run_sync(model.predict_proba, X)
        else:
            probas = model.predict_proba(X)
        classes = probas.argmax(axis=1)
        names = model.class_names
        for c in classes.tolist():
            metrics.count_prediction(names[c], model.version)
        try:
            self.monitor.observe(model, X, probas)
        except Exception:
            log.exception("prediction monitor failed")
        self.redis.remember_prediction(request_id, classes.tolist(), model.version)
        return probas, classes

    def publish_model(self) -> None:
        model = self.registry.active
        if model is not None:
            metrics.set_model_info(model.name, model.version, model.sha256)

    async def start(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.registry.load)
        except (NoModelError, ModelIntegrityError) as exc:
            log.error("no model to serve yet: %s", exc)
        self.publish_model()
        await self.redis.probe()
        self._tasks = [
            asyncio.create_task(self.redis.probe_forever()),
            asyncio.create_task(self._refresh_models_forever()),
        ]

    async def _refresh_models_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_refresh_seconds)
            started = time.monotonic()
            try:
                if self.registry.active is None:
                    await anyio.to_thread.run_sync(self.registry.load)
                else:
                    await anyio.to_thread.run_sync(self.registry.refresh)
            except (NoModelError, ModelIntegrityError) as exc:
                log.debug("model refresh: %s", exc)
            except Exception:
                log.exception("model refresh failed")
            self.publish_model()
            log.debug("model refresh took %.1f ms", (time.monotonic() - started) * 1000)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.redis.close()
        self.audit.close()
