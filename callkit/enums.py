"""TUICallKit's enums with TUICallKit's numbers."""

from __future__ import annotations

from enum import IntEnum

from callkit.signaling.codes import CallEndReason, CallMediaType, CallRole


class NetworkQuality(IntEnum):
    """TUICallKit's NetworkQuality, as reported in ``onUserNetworkQualityChanged``."""

    UNKNOWN = 0
    EXCELLENT = 1
    GOOD = 2
    POOR = 3
    BAD = 4
    VERY_BAD = 5
    DOWN = 6


class CallStatus(IntEnum):
    """TUICallKit's CallStatus of the local user."""

    NONE = 0
    WAITING = 1
    ACCEPT = 2


__all__ = ["CallEndReason", "CallMediaType", "CallRole", "CallStatus", "NetworkQuality"]
