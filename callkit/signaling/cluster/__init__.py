"""Several signaling nodes over one Redis (issue 15).

- :mod:`.redisstore`: :class:`RedisStateStore`, store.py's ``StateStore`` over Redis: calls and
  per-user session documents changed atomically (Lua compare-and-set) by the same pure rules as one
  process, frames published to each socket's node inside the same commit, shared timer sets,
  node liveness and the take-over of a dead node's sockets;
- :mod:`.link`: the connection (one pool per process), ``StoreUnavailable`` (-1406) on a lost
  link, pub/sub that survives a Redis restart;
- :mod:`.keys`: every key and channel name;
- :mod:`.nodes`: node liveness (a short-lived entry each node refreshes) and dead-node claims.

Importing this package needs redis-py (``pip install 'callkit[redis]'``).
"""

from __future__ import annotations

from .keys import Keys
from .link import RedisLink, StoreUnavailable
from .nodes import NodeLiveness
from .redisstore import RedisStateStore

__all__ = [
    "Keys",
    "NodeLiveness",
    "RedisLink",
    "RedisStateStore",
    "SharedTimers",
    "StoreUnavailable",
]
