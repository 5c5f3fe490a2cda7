"""TUICallKit's enums with TUICallKit's numbers."""

from __future__ import annotations

from enum import IntEnum

from callkit.media.quality import NetworkQuality
from callkit.signaling.codes import CallEndReason, CallMediaType, CallRole


class CallStatus(IntEnum):
    """TUICallKit's CallStatus of the local user."""

    NONE = 0
    WAITING = 1
    ACCEPT = 2


__all__ = ["CallEndReason", "CallMediaType", "CallRole", "CallStatus", "NetworkQuality"]
