"""What a relay's ``data`` may look like, checked by the service and again by engines.

Pure functions, no I/O. The service refuses a relay whose data does not fit (-1202) instead of
forwarding it; an engine drops a relayed message that does not fit before it reaches aiortc.
Shapes (docs/protocol.md, "Media negotiation"):

- ``offer`` / ``answer``: ``{"sdp": str, "type": "offer" | "answer"}`` (``type`` = the kind);
- ``candidate``: a browser's RTCIceCandidateInit, ``{"candidate": str, "sdpMid": str | null,
  "sdpMLineIndex": int | null, "usernameFragment": str | null}``, every key optional
  (``candidate: ""`` or none marks the end of candidates);
- ``renegotiate``: ``{}`` (any keys are ignored).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_CANDIDATE_CHARS", "MAX_NESTING", "check_relay_data", "too_deep"]

#: deepest JSON nesting accepted in any message field (a call snapshot needs 4)
MAX_NESTING = 16
#: longest ``candidate`` line (a real one is under 200 characters)
MAX_CANDIDATE_CHARS = 1024
_MAX_MID_CHARS = 64


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when ``value`` nests lists / objects more than ``limit`` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _optional(data: dict[str, Any], key: str, kind: type, limit: int | None = None) -> None:
    value = data.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__} or null")
    if isinstance(value, str) and limit is not None and len(value) > limit:
        raise ValueError(f"{key} is longer than {limit} characters")
    if isinstance(value, int) and not 0 <= value <= 255:
        raise ValueError(f"{key} must be in 0..255")


def check_relay_data(kind: str, data: Any) -> None:
    """Raise ValueError (with a short reason) unless ``data`` fits relay ``kind``."""
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    if too_deep(data):
        raise ValueError(f"data nests deeper than {MAX_NESTING} levels")
    if kind in ("offer", "answer"):
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise ValueError(f"{kind} data needs sdp: a non-empty string")
        if data.get("type") != kind:
            raise ValueError(f"{kind} data needs type: {kind!r}")
    elif kind == "candidate":
        _optional(data, "candidate", str, MAX_CANDIDATE_CHARS)
        _optional(data, "sdpMid", str, _MAX_MID_CHARS)
        _optional(data, "sdpMLineIndex", int)
        _optional(data, "usernameFragment", str, _MAX_MID_CHARS)
    elif kind != "renegotiate":
        raise ValueError(f"unknown relay kind {kind!r:.20}")
