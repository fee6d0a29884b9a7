"""Errors raised while setting hooks up (never while they run: then they only log)."""

from __future__ import annotations

__all__ = ["HookLoadError"]


class HookLoadError(Exception):
    """A hook could not be loaded; ``str(err)`` is one line meant for an operator."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
