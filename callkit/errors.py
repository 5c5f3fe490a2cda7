"""The one exception callkit raises."""

from __future__ import annotations

# The class lives in media.errors (media never imports callkit), so that media's
# DeviceError(-1101) is a CallError too: `except callkit.CallError` catches it.
from callkit.media.errors import CallError, DeviceError
from callkit.signaling.codes import ErrorCode

__all__ = ["CallError", "DeviceError", "ErrorCode"]
