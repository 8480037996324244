"""Exceptions of the model registry."""

from __future__ import annotations


class ModelIntegrityError(Exception):
    """An artifact failed verification; nothing from it was unpickled.

    ``reason`` is a short, stable, label-safe token (used as the metric label and
    in audit records); ``detail`` is the human explanation.
    """

    def __init__(self, version: str, reason: str, detail: str = "") -> None:
        self.version = version
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"model version {version!r} refused ({reason}): {self.detail}")


class NoModelError(Exception):
    """No valid model version exists (or nothing to roll back to)."""
