"""Group grants: which group calls a user may join by room id without being invited.

The application (the holder of the secret key) puts the grant in the UserSig's ``userbuf``,
as TRTC's PrivateMapKey carries room permissions: the userbuf is covered by the UserSig's
HMAC, so a client cannot forge or widen it, and the service needs no member list of its own.

The userbuf is UTF-8 JSON ``{"callkitGroups": ["team-a", "ops"]}``: the user may join any
live group call whose ``groupId`` is in the list. A userbuf in any other shape grants nothing
(the UserSig itself stays valid, so apps may use userbuf for their own data too).
"""

from __future__ import annotations

import json

__all__ = ["GRANT_KEY", "MAX_GRANTED_GROUPS", "granted_groups", "group_grant"]

#: the userbuf key that lists the granted group ids
GRANT_KEY = "callkitGroups"
#: most group ids one grant may list (a TLS-SIG userbuf is small anyway)
MAX_GRANTED_GROUPS = 64
#: longest group id a grant may name (protocol.MAX_STR_LEN limits group ids on the wire too)
MAX_GROUP_ID_LEN = 128


def group_grant(groups: list[str]) -> bytes:
    """The userbuf granting ``groups``; pass it to ``gen_user_sig(..., userbuf=...)``."""
    ids = list(dict.fromkeys(groups))
    if not ids or len(ids) > MAX_GRANTED_GROUPS:
        raise ValueError(f"a grant names 1 to {MAX_GRANTED_GROUPS} groups")
    for gid in ids:
        if not isinstance(gid, str) or not gid or len(gid) > MAX_GROUP_ID_LEN:
            raise ValueError(f"invalid group id {gid!r:.40}")
    return json.dumps({GRANT_KEY: ids}, separators=(",", ":")).encode("utf-8")


def granted_groups(userbuf: bytes | None) -> frozenset[str]:
    """The group ids a verified UserSig's ``userbuf`` grants (empty when it grants none)."""
    if not userbuf:
        return frozenset()
    try:
        obj = json.loads(userbuf.decode("utf-8"))
    except (ValueError, UnicodeError, RecursionError):
        return frozenset()
    ids = obj.get(GRANT_KEY) if isinstance(obj, dict) else None
    if not isinstance(ids, list) or len(ids) > MAX_GRANTED_GROUPS:
        return frozenset()
    return frozenset(g for g in ids if isinstance(g, str) and g and len(g) <= MAX_GROUP_ID_LEN)
