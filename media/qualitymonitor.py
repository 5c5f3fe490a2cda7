"""QualityMonitor: network quality levels of every call member from their peer connections."""

from __future__ import annotations

from collections.abc import Mapping

from .peer import PeerSession
from .quality import DOWN, UNKNOWN, QualityTracker, uplink_quality, worst_quality
from .rtcstats import snapshot_from_report


class QualityMonitor:
    """Keeps one :class:`QualityTracker` per remote user; ``measure`` closes a window."""

    def __init__(self) -> None:
        self._trackers: dict[str, QualityTracker] = {}

    def forget(self, user_id: str) -> None:
        """Drop a user's history (they left)."""
        self._trackers.pop(user_id, None)

    async def measure(self, users: list[str], peers: Mapping[str, PeerSession],
                      now: float) -> tuple[int, dict[str, int]]:
        """Return (our uplink level, {remote user: level}) for the window ending ``now``.

        A remote user is measured from what we receive from them (loss, jitter) plus our RTT
        to them; our own level is the worst uplink our peers report back (RTCP RR).
        """
        remote: dict[str, int] = {}
        uplinks: list[int] = []
        for user in users:
            session = peers.get(user)
            if session is None or not session.connected.is_set():
                failed = session is not None and session.failed
                remote[user] = DOWN if failed else UNKNOWN
                continue
            report = await session.get_stats()
            inbound, outbound = snapshot_from_report(report, "audio")
            tracker = self._trackers.setdefault(user, QualityTracker())
            rtt = outbound.rtt_ms if outbound is not None else None
            if inbound is None:
                remote[user] = tracker.level
            else:
                remote[user] = tracker.update(
                    now, packets_received=inbound.packets_received,
                    packets_lost=inbound.packets_lost, jitter_ms=inbound.jitter_ms,
                    rtt_ms=rtt, connection_failed=session.failed)
            if outbound is not None and outbound.remote_fraction_lost is not None:
                uplinks.append(uplink_quality(outbound.remote_fraction_lost,
                                              outbound.remote_jitter_ms or 0.0, rtt))
        return (worst_quality(uplinks) if uplinks else UNKNOWN), remote
