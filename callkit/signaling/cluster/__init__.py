"""Several signaling nodes over one Redis (issue 15).

- :mod:`.link`: the connection (one pool per process), ``StoreUnavailable`` (-1406) on a lost
  link, pub/sub that survives a Redis restart;
- :mod:`.keys`: every key and channel name;
- :mod:`.callstore`: calls as JSON documents, changed atomically (WATCH/MULTI) by the pure
  rules of callstate.py, the resulting messages published inside the same commit;
- :mod:`.devices`: device records and the routing rule (owning device, else every device);
- :mod:`.timers`: the shared timer set every node polls (a timeout fires once);
- :mod:`.nodes`: node liveness (a short-lived entry each node refreshes) and dead-node claims.
"""

from __future__ import annotations

from .callstore import Applied, CallTx, RedisCallStore
from .keys import Keys
from .link import RedisLink, StoreUnavailable
from .nodes import NodeLiveness
from .timers import SharedTimers

__all__ = [
    "Applied",
    "CallTx",
    "Keys",
    "NodeLiveness",
    "RedisCallStore",
    "RedisLink",
    "SharedTimers",
    "StoreUnavailable",
]
