"""ICE servers the signaling service hands out: STUN/TURN URLs and TURN REST credentials.

TURN credentials follow coturn's shared-secret scheme (``use-auth-secret`` /
``static-auth-secret``, the "TURN REST API" draft): the username is
``<expiry-unix-time>:<userId>`` and the password is ``base64(HMAC-SHA1(secret, username))``.
The TURN server recomputes the password from the username and refuses it once the expiry is
past, so the signaling service and coturn share only the secret. Pure: time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IceServersConfig", "check_ice_url", "turn_credentials"]

_URL_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


def check_ice_url(url: str, schemes: tuple[str, ...]) -> str:
    """Return ``url`` if it is a valid ``stun:``/``turn:`` URL (RFC 7064/7065) with one of
    ``schemes``; raise ``ValueError`` naming the problem otherwise."""
    m = _URL_RE.match(url) if isinstance(url, str) else None
    if m is None:
        raise ValueError(
            f"bad ICE server URL {url!r}: expected {' or '.join(s + ':' for s in schemes)}"
            "HOST[:PORT][?transport=udp|tcp]"
        )
    if m["scheme"] not in schemes:
        raise ValueError(f"bad ICE server URL {url!r}: scheme must be one of {', '.join(schemes)}")
    if m["transport"] and m["scheme"].startswith("stun"):
        raise ValueError(f"bad ICE server URL {url!r}: stun URLs take no ?transport")
    if m["port"] is not None and not 0 < int(m["port"]) < 65536:
        raise ValueError(f"bad ICE server URL {url!r}: port out of range")
    return url


def turn_credentials(secret: str, user_id: str, ttl: float, now: float) -> tuple[str, str]:
    """``(username, password)`` valid until ``now + ttl`` for coturn's ``use-auth-secret``."""
    username = f"{int(now + ttl)}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True)
class IceServersConfig:
    """What the service puts in each login reply's ``iceServers``."""

    #: ``stun:`` / ``stuns:`` URLs
    stun: list[str] = field(default_factory=list)
    #: ``turn:`` / ``turns:`` URLs (``?transport=udp|tcp``), all served with one credential
    turn: list[str] = field(default_factory=list)
    #: coturn's ``static-auth-secret``; required when ``turn`` is set
    turn_secret: str | None = None
    #: seconds a handed-out TURN credential stays valid
    turn_ttl: float = 86400.0

    def __post_init__(self) -> None:
        for url in self.stun:
            check_ice_url(url, ("stun", "stuns"))
        for url in self.turn:
            check_ice_url(url, ("turn", "turns"))
        if self.turn and not self.turn_secret:
            raise ValueError("--turn needs --turn-secret (coturn's static-auth-secret)")
        if not self.turn_ttl > 0:
            raise ValueError(f"turn_ttl must be > 0 seconds, got {self.turn_ttl!r}")

    def for_user(self, user_id: str, now: float) -> list[dict[str, Any]]:
        """The ``iceServers`` list (RTCIceServer JSON shape) for ``user_id`` at wall time
        ``now``: STUN entries, then one TURN entry with fresh credentials."""
        servers: list[dict[str, Any]] = []
        if self.stun:
            servers.append({"urls": list(self.stun)})
        if self.turn and self.turn_secret:
            username, password = turn_credentials(self.turn_secret, user_id, self.turn_ttl, now)
            servers.append({"urls": list(self.turn), "username": username, "credential": password})
        return servers
