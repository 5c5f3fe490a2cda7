"""callkit: an open, self-hostable calling engine with TUICallKit's event model."""

from __future__ import annotations

import logging

from .engine import CallEngine, CallState
from .enums import CallEndReason, CallMediaType, CallRole, CallStatus, NetworkQuality
from .errors import CallError, ErrorCode
from .events import EVENT_NAMES, PAYLOAD_KEYS, EventName
from .params import CallParams

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "EVENT_NAMES",
    "PAYLOAD_KEYS",
    "CallEndReason",
    "CallEngine",
    "CallError",
    "CallMediaType",
    "CallParams",
    "CallRole",
    "CallState",
    "CallStatus",
    "ErrorCode",
    "EventName",
    "NetworkQuality",
]
