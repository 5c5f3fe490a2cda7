"""The one exception callkit raises."""

from __future__ import annotations

from signaling.codes import ErrorCode


class CallError(Exception):
    """A refused or failed engine operation, with TUICallKit's error ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    def __repr__(self) -> str:
        return f"CallError({self.code}, {self.message!r})"


__all__ = ["CallError", "ErrorCode"]
