"""The exception of callkit and media: ``CallError(code, message)`` with TUICallKit's codes.

It lives here, in the lowest package, so that ``media`` (which never imports ``callkit``)
can raise it and ``except callkit.CallError`` still catches it: ``callkit.errors``
re-exports this very class. :class:`DeviceError` is the ``-1101`` "device not available"
kind raised by microphones, speakers and cameras.
"""

from __future__ import annotations

__all__ = ["DEVICE_NOT_AVAILABLE", "CallError", "DeviceError"]

DEVICE_NOT_AVAILABLE = -1101
"""TUICallKit's code for a camera / microphone / speaker that is missing or not allowed."""


class CallError(Exception):
    """A refused or failed engine operation, with TUICallKit's error ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r})"


class DeviceError(CallError):
    """A microphone, speaker or camera is not available: always ``code == -1101``.

    The message names what is missing (the PortAudio library, a device, an FFmpeg input).
    """

    def __init__(self, message: str) -> None:
        super().__init__(DEVICE_NOT_AVAILABLE, message)

    def __repr__(self) -> str:
        return f"DeviceError({self.message!r})"
