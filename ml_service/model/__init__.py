"""The model side of the service: signed artifacts, verified loading, fast inference, drift.

Public API (the service codes against exactly this)::

    from ml_service.model import (ModelRegistry, LoadedModel, ModelVersionInfo,
                                  ModelIntegrityError, NoModelError, PredictionMonitor)
"""

from .errors import ModelIntegrityError, NoModelError
from .loaded import LoadedModel
from .monitor import PredictionMonitor
from .registry import ModelRegistry, ModelVersionInfo

__all__ = [
    "LoadedModel",
    "ModelIntegrityError",
    "ModelRegistry",
    "ModelVersionInfo",
    "NoModelError",
    "PredictionMonitor",
]
