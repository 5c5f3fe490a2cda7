"""QualityMonitor: network quality levels of every call member, from their peer connections.

The engine calls :meth:`QualityMonitor.step` every :attr:`~QualityMonitor.tick` seconds
(0.5 s); it samples every peer connection and returns a report when one is due (every
``interval``, 2 s) or when someone went DOWN or came back (at once, so a cut-off shows in
about 3 s instead of up to 5 s). Levels (DESIGN section 4, :mod:`media.quality`):

* A remote user, from what we receive from them: loss from the audio stream's RTP sequence
  numbers (aiortc's cumulative ``packetsReceived`` / ``packetsLost``), sampled every tick and
  measured over an adaptive sliding window of up to 6 s (:class:`~media.quality.LossWindow`);
  their RFC 3550 interarrival jitter (RTP units / 48 kHz -> ms); and our RTT to them (median
  of the RTT samples of the last 6 s, from RTCP: :func:`media.rtcstats.rtcp_log`). DOWN when
  no RTP packet (audio or video) arrived from them for 3 s (timestamps from aiortc's
  ``getSynchronizationSources``) or their connection failed (or was closed under us: aioice
  closes it after about 30 s without consent responses); UNKNOWN before media connects.
* The local user, from what peers receive from us: each peer's RTCP receiver reports carry
  the extended highest sequence number and the cumulative loss of our audio stream, so the
  same windowed loss is computed from them (rather than from one report's ``fraction_lost``,
  which covers only the 0.5-1.5 s since the peer's previous report), with the jitter the
  peer reported and our RTT to it, as of the latest report. A peer whose reports show no new
  packet for 3 s while we keep sending makes us DOWN; reports that stop coming are no such
  evidence (the peer's own uplink may be the broken one). The local level is the worst over
  peers that sent a report in the last 4 s; with none, the previous local level stays.

Loss is measured on audio only: Opus runs at a constant 50 packets/s in every call (muted
microphones send digital silence), while aiortc's video stats merge the RTX stream into the
media stream's entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .quality import DOWN, DOWN_AFTER, UNKNOWN, QualityTracker, RttWindow, worst_quality
from .rtcstats import DEFAULT_CLOCK_RATES, ReportBlock

__all__ = ["PeerSample", "QualityMonitor"]

log = logging.getLogger(__name__)

#: A peer whose last receiver report is older than this no longer counts for the local level.
REPORT_STALE_AFTER = 4.0


@dataclass
class PeerSample:
    """What one peer connection tells us at one moment (inputs of the pure part)."""

    connected: bool = True
    failed: bool = False
    packets_received: int | None = None
    """Cumulative audio RTP packets received from the peer; None before the first."""
    packets_lost: int = 0
    """Cumulative audio RTP packets lost (aiortc: expected - received)."""
    jitter_ms: float | None = None
    """Interarrival jitter of the peer's audio, in ms."""
    last_packet_at: float | None = None
    """When the last RTP packet (any kind) from the peer arrived, monitor clock."""
    blocks: list[ReportBlock] = field(default_factory=list)
    """RTCP report blocks about our audio that arrived since the previous sample."""
    packets_sent: int = 0
    """Audio RTP packets we had sent at our latest SR."""


class _Peer:
    def __init__(self, session: Any, down_after: float, span: float, recent: float) -> None:
        self.session = session
        self.down = QualityTracker(down_after=down_after, loss_span=span, loss_recent=recent)
        self.up = QualityTracker(
            down_after=down_after, loss_span=span, loss_recent=recent, from_zero=False
        )
        self.rtt = RttWindow(span)
        self.up_jitter_ms: float | None = None
        self.last_block_at: float | None = None
        self.sent_at_progress = 0
        self.last_received: int | None = None


class QualityMonitor:
    """Per-call quality bookkeeping of one engine (see the module docstring).

    ``interval``: seconds between regular reports (the engine's ``quality_interval``).
    ``tick``: seconds between samples. ``down_after``: silence that makes a user DOWN.
    ``loss_span`` / ``loss_recent``: the adaptive loss window (:class:`LossWindow`).
    """

    def __init__(
        self,
        *,
        interval: float = 2.0,
        tick: float = 0.5,
        down_after: float = DOWN_AFTER,
        loss_span: float = 6.0,
        loss_recent: float = 2.0,
    ) -> None:
        if interval <= 0 or tick <= 0:
            raise ValueError(f"interval and tick must be > 0, got {interval!r}, {tick!r}")
        self.interval = float(interval)
        self.tick = min(float(tick), self.interval)
        self.down_after = float(down_after)
        self.loss_span = float(loss_span)
        self.loss_recent = float(loss_recent)
        self._peers: dict[str, _Peer] = {}
        self._local = UNKNOWN
        self._next_due: float | None = None
        self._reported: dict[str, int] = {}
        self._local_reported = UNKNOWN

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        """Begin a call: forget everything; the first regular report is due at now+interval."""
        self._peers.clear()
        self._reported.clear()
        self._local = self._local_reported = UNKNOWN
        self._next_due = now + self.interval

    def forget(self, user_id: str) -> None:
        """Drop a user's history (they left)."""
        self._peers.pop(user_id, None)
        self._reported.pop(user_id, None)

    def sleep_time(self, now: float) -> float:
        """Seconds until the next sample is due (ticks stay on a fixed grid)."""
        if self._next_due is None:
            return self.tick
        ahead = (self._next_due - now) % self.tick
        return ahead if ahead > 0.01 else ahead + self.tick

    # ------------------------------------------------------------------ sampling (I/O)

    async def step(
        self, users: Sequence[str], peers: Mapping[str, Any], now: float
    ) -> tuple[int, dict[str, int]] | None:
        """Sample every user's peer connection; return ``(local level, {user: level})`` when
        a report is due or someone went DOWN / came back, else None."""
        samples: dict[str, tuple[Any, PeerSample | None]] = {}
        for user in users:
            session = peers.get(user)
            sample = None
            if session is not None:
                try:
                    sample = await session.quality_sample(now)
                except Exception:  # never let stats break the loop
                    log.exception("quality: reading stats of %s failed", user)
            samples[user] = (session, sample)
        return self.update(now, samples)

    # ------------------------------------------------------------------ pure part

    def update(
        self, now: float, samples: Mapping[str, tuple[Any, PeerSample | None]]
    ) -> tuple[int, dict[str, int]] | None:
        """Feed one round of samples (``{user: (session, sample)}``, sample None when the
        user has no peer connection yet) and return a report if one is due."""
        remote: dict[str, int] = {}
        uplinks: list[int] = []
        for user, (session, sample) in samples.items():
            level, uplink = self._measure(user, session, sample, now)
            remote[user] = level
            if uplink is not None:
                uplinks.append(uplink)
        if uplinks:
            self._local = worst_quality(uplinks)
        if self._next_due is None:
            self._next_due = now + self.interval
        due = now >= self._next_due - self.tick / 2
        flipped = (self._local == DOWN) != (self._local_reported == DOWN) or any(
            (lv == DOWN) != (self._reported.get(u, UNKNOWN) == DOWN) for u, lv in remote.items()
        )
        if not (due or flipped):
            return None
        if due:
            self._next_due += self.interval
            if self._next_due <= now:  # fell behind (a stalled loop): skip, do not burst
                self._next_due = now + self.interval
        self._reported = dict(remote)
        self._local_reported = self._local
        return self._local, remote

    def _measure(
        self, user: str, session: Any, sample: PeerSample | None, now: float
    ) -> tuple[int, int | None]:
        """Return (the user's level, our uplink level to them or None if not measured)."""
        if session is None or sample is None:
            return UNKNOWN, None
        if sample.failed:
            return DOWN, None
        if not sample.connected:
            return UNKNOWN, None
        peer = self._peers.get(user)
        if peer is None or peer.session is not session:
            peer = self._peers[user] = _Peer(
                session, self.down_after, self.loss_span, self.loss_recent
            )
        for block in sample.blocks:
            if block.rtt_ms is not None:
                peer.rtt.add(block.at, block.rtt_ms)
        rtt = peer.rtt.value(now)

        # downlink: what we receive from them
        if sample.packets_received is not None:
            peer.down.add(
                now,
                packets_received=sample.packets_received,
                packets_lost=sample.packets_lost,
                last_packet_at=sample.last_packet_at,
            )
        elif sample.last_packet_at is not None and peer.down.last_packet_at is None:
            peer.down.last_packet_at = sample.last_packet_at
        if peer.down.last_packet_at is None:  # nothing yet: the DOWN clock starts now
            peer.down.last_packet_at = now
        level = peer.down.evaluate(now, jitter_ms=sample.jitter_ms, rtt_ms=rtt)

        # uplink: what they receive from us, from their receiver reports
        rate = DEFAULT_CLOCK_RATES["audio"]
        for block in sample.blocks:
            received = block.highest_seq - block.packets_lost
            grew = peer.last_received is None or received > peer.last_received
            peer.last_received = received
            if grew:
                peer.sent_at_progress = sample.packets_sent
            peer.up.add(block.at, packets_received=received, packets_lost=block.packets_lost)
            peer.up_jitter_ms = 1000.0 * block.jitter / rate
            peer.last_block_at = block.at
        if peer.last_block_at is None or now - peer.last_block_at >= REPORT_STALE_AFTER:
            return level, None
        if sample.packets_sent <= peer.sent_at_progress:
            # we sent nothing new since they last confirmed progress: silence is not loss
            peer.up.last_packet_at = max(peer.up.last_packet_at or now, peer.last_block_at)
        # judged as of the latest report: missing reports are no evidence of silence
        uplink = peer.up.evaluate(peer.last_block_at, jitter_ms=peer.up_jitter_ms, rtt_ms=rtt)
        return level, uplink

    # ------------------------------------------------------------------ introspection

    def details(self, user: str, now: float) -> dict[str, Any] | None:
        """Measured inputs for ``user`` (loss %, jitter and RTT in ms, both directions), for
        logs, demos and tests; None if the user is not measured."""
        peer = self._peers.get(user)
        if peer is None:
            return None
        return {
            "down_loss_pct": peer.down.last_loss_pct,
            "down_score": peer.down.last_score,
            "up_loss_pct": peer.up.last_loss_pct,
            "up_score": peer.up.last_score,
            "up_jitter_ms": peer.up_jitter_ms,
            "rtt_ms": peer.rtt.value(now),
        }
