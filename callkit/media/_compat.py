"""Where callkit depends on aiortc / aioice internals, pinned to the versions it was made for.

Targets **aiortc 1.16.x** and **aioice 0.13.x** (pinned in pyproject.toml). Every replacement of
an aiortc or aioice internal belongs here, each with a test that fails when it stops taking
effect; the hooks that still live in ``icehooks.py`` (host addresses, datagram shaping, the
multi-TURN allocation race) and ``rtcstats.py`` (RTCP log) move here with issue 14.

TURN and nonces (issue 10). coturn answers a request that carries an expired nonce with
``438 Stale Nonce`` and a fresh NONCE; a client must retry with it (RFC 8656 section 9).
aioice 0.13.0 does: ``TurnClientMixin.request_with_retry`` retries a 438 once with the new
nonce, for every request (Allocate, Refresh, ChannelBind). So no replacement is installed
for it; ``tests/test_compat.py`` proves it against a real coturn whose nonces expire after
1 s, and fails if an aioice version without it is installed.

The failure reported in issue 10 ("438 Wrong nonce" on the second ChannelBind, then
``400 Bad Request`` on every retry) was not a nonce bug: coturn *closes a whole allocation*
when its relay socket gets an error sending to a peer (there, ENETUNREACH for a private host
candidate of the other laptop, on a TURN server without a default route). The client's next
request then lands on a new coturn session with no nonce ("Wrong nonce") and no allocation
(400). A TURN server on the internet has a default route, so it never sees ENETUNREACH;
docs/deploy.md says so and tests/nattopo.py gives its "internet" a default route.
"""

from __future__ import annotations

from importlib.metadata import version

__all__ = ["TARGETS", "version_mismatches"]

#: the minor versions the internals used by callkit were checked against
TARGETS = {"aiortc": "1.16", "aioice": "0.13"}


def version_mismatches() -> list[str]:
    """One line per installed aiortc / aioice whose minor version is not the targeted one."""
    problems = []
    for package, target in TARGETS.items():
        installed = version(package)
        if ".".join(installed.split(".")[:2]) != target:
            problems.append(f"{package} {installed} installed, callkit targets {target}.x")
    return problems
