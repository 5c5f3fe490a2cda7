"""Every Redis key and channel the cluster uses, in one place (pure: names only).

All keys start with a prefix (``ck`` by default), so several deployments or tests can share
one Redis. One call is one JSON document; index keys point at it:

``{p}:call:{callId}``      the call (``Call.to_json()``), JSON
``{p}:uc:{userId}``        the call a user rings in or is joined to
``{p}:room:{roomId}``      the call using a room id
``{p}:timers``             sorted set: call id -> its earliest ringing deadline (wall clock)
``{p}:epoch``              set once per Redis lifetime: a node that sees it change knows Redis
                           lost the cluster's state
``{p}:user:{userId}``      the user's session document: devices, call owner, profile (JSON)
``{p}:utimers``            sorted set: user id -> its earliest UserSig expiry / end of grace
``{p}:sess:{sessionId}``   the user a session id belongs to
``{p}:nodeusers:{nodeId}`` set: users with a socket on that node (to take over a dead node)
``{p}:nodes``              sorted set: node id -> when its liveness lapses (wall clock)
``{p}:node:{nodeId}``      pub/sub channel: frames for the sockets a node hosts
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
    def call_timers(self) -> str:
        return f"{self.prefix}:timers"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    @property
    def user_timers(self) -> str:
        return f"{self.prefix}:utimers"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:sess:{session_id}"

    def node_users(self, node_id: str) -> str:
        return f"{self.prefix}:nodeusers:{node_id}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def node_channel(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"
