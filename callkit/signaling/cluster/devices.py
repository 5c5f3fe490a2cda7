"""Device records shared by every node (pure data and routing rules; no I/O here).

A user's devices are the hash ``{p}:dev:{userId}``: session id -> :class:`Device`. A device
lives on the node whose socket it is; ``held`` marks one whose socket dropped and that waits
for a resume (its messages go to its outbox list instead of its node). A device whose node
is no longer alive counts as held too. :func:`targets` is the routing rule of server.py's
``_targets`` over these records: a user's messages about a call go to the device that owns
the call, else to every device.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["Delivery", "Device", "Route", "targets"]


@dataclass
class Device:
    """One session of a user, as every node sees it."""

    #: the node hosting the session's socket
    node: str
    #: the socket dropped: the session waits for a resume (messages are buffered)
    held: bool = False
    #: this session lets later multi-device logins of its user coexist
    multi: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Device:
        data = json.loads(text)
        return cls(str(data["node"]), bool(data["held"]), bool(data["multi"]))


@dataclass(frozen=True)
class Delivery:
    """Where one message for one session goes: a live node's channel, or the outbox."""

    session_id: str
    #: the node to publish to; None: buffer in the session's outbox (held or node dead)
    node: str | None


@dataclass
class Route:
    """The devices and call owners of a set of users, read in one transaction."""

    devices: dict[str, dict[str, Device]]
    #: user -> (call id, owning session id)
    owners: dict[str, tuple[str, str]]
    #: nodes alive now
    alive: set[str]

    def deliveries(self, user: str, call_id: str) -> list[Delivery]:
        """Where ``user``'s messages about ``call_id`` go (see :func:`targets`)."""
        devices = self.devices.get(user, {})
        return [self.to(sid, devices[sid]) for sid in targets(user, call_id, self)]

    def to(self, session_id: str, device: Device) -> Delivery:
        live = not device.held and device.node in self.alive
        return Delivery(session_id, device.node if live else None)


def targets(user: str, call_id: str, route: Route) -> list[str]:
    """The session ids that get ``user``'s messages about ``call_id``: the owning device
    (none if it is gone), else every device of the user."""
    devices = route.devices.get(user, {})
    owner = route.owners.get(user)
    if owner is not None and owner[0] == call_id:
        return [owner[1]] if owner[1] in devices else []
    return list(devices)
