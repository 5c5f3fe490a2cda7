"""Every Redis key and channel the cluster uses, in one place (pure: names only).

All keys start with a prefix (``ck`` by default), so several deployments or tests can share
one Redis. One call is one JSON document; index keys point at it:

``{p}:call:{callId}``      the call (``Call.to_json()``), JSON
``{p}:uc:{userId}``        the call a user rings in or is joined to
``{p}:room:{roomId}``      the call using a room id
``{p}:timers``             sorted set: call id -> its earliest ringing deadline (wall clock)
``{p}:dev:{userId}``       hash: session id -> that device's record (JSON: node, held, ...)
``{p}:own:{userId}``       JSON ``[callId, sessionId]``: the device that owns the user's call
``{p}:outbox:{sessionId}`` list: messages buffered for a held session
``{p}:holds``              sorted set: ``userId sessionId`` -> when the held session is released
``{p}:nodes``              sorted set: node id -> when its liveness lapses (wall clock)
``{p}:node:{nodeId}``      pub/sub channel: messages for the sessions a node hosts
``{p}:prof:{userId}``      hash: nickname, avatarUrl
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """Key names under one ``prefix``."""

    prefix: str = "ck"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def user_call(self, user_id: str) -> str:
        return f"{self.prefix}:uc:{user_id}"

    def room(self, room_id: int) -> str:
        return f"{self.prefix}:room:{room_id}"

    @property
    def timers(self) -> str:
        return f"{self.prefix}:timers"

    def devices(self, user_id: str) -> str:
        return f"{self.prefix}:dev:{user_id}"

    def owner(self, user_id: str) -> str:
        return f"{self.prefix}:own:{user_id}"

    def outbox(self, session_id: str) -> str:
        return f"{self.prefix}:outbox:{session_id}"

    @property
    def holds(self) -> str:
        return f"{self.prefix}:holds"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def node_channel(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def profile(self, user_id: str) -> str:
        return f"{self.prefix}:prof:{user_id}"
