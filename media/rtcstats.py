"""Condense an aiortc :class:`~aiortc.RTCStatsReport` into what quality needs, in ms.

What aiortc 1.16 puts in its stats (checked against its source):

* ``inbound-rtp`` (``RTCRtpReceiver.getStats``): cumulative ``packetsReceived`` and
  ``packetsLost`` (expected - received, may dip when duplicates arrive), and ``jitter`` as an
  integer in RTP timestamp units of the codec clock (RFC 3550 interarrival jitter,
  ``StreamStatistics.jitter``). One entry per receiver: if a receiver saw several SSRCs only
  the last written survives (the id is per receiver).
* ``outbound-rtp`` (``RTCRtpSender.getStats``): cumulative ``packetsSent``, present for every
  sender even before it sent anything.
* ``remote-inbound-rtp`` (written when an RTCP RR/SR report block about our SSRC arrives):
  ``fractionLost`` is the raw 8-bit RTCP value 0-255 (not 0-1), ``jitter`` is in RTP units
  of our codec clock, ``packetsLost`` cumulative, ``roundTripTime`` in seconds and ``None``
  until a report acknowledges our latest SR. Its ``ssrc`` is the reporter's, not ours.

Jitter is converted with the codec clock rate: 48000 Hz for Opus audio, 90000 Hz for video
(override with ``clock_rates``, e.g. ``{"audio": 8000}`` for G.711).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CLOCK_RATES", "InboundSnapshot", "OutboundSnapshot", "snapshot_from_report"]

#: RTP clock rate per media kind (Opus is 48 kHz, all video codecs 90 kHz).
DEFAULT_CLOCK_RATES: Mapping[str, int] = {"audio": 48000, "video": 90000}


@dataclass
class InboundSnapshot:
    """What we receive from one peer (summed over the selected streams)."""

    packets_received: int
    """Cumulative RTP packets received (sum over streams)."""
    packets_lost: int
    """Cumulative RTP packets lost (sum over streams; can be negative with duplicates)."""
    jitter_ms: float
    """Interarrival jitter in ms (the worst stream)."""
    streams: int = 1
    """How many inbound-rtp entries were combined."""


@dataclass
class OutboundSnapshot:
    """What we send to one peer and what the peer reports back about it."""

    packets_sent: int
    """Cumulative RTP packets sent (sum over streams)."""
    rtt_ms: float | None = None
    """Round-trip time in ms from RTCP SR/RR (the worst stream), None before the first."""
    remote_fraction_lost: int | None = None
    """Peer-reported fraction lost, 0-255, over its last report interval (worst stream)."""
    remote_jitter_ms: float | None = None
    """Peer-reported interarrival jitter of our stream in ms (worst stream)."""
    remote_packets_lost: int | None = None
    """Peer-reported cumulative packets lost (sum over reported streams)."""
    streams: int = 1
    """How many outbound-rtp entries were combined."""


def _matches(stats: Any, kind: str | None) -> bool:
    return kind is None or getattr(stats, "kind", None) == kind


def _jitter_ms(stats: Any, clock_rates: Mapping[str, int]) -> float:
    rate = clock_rates.get(getattr(stats, "kind", ""), 0)
    jitter = getattr(stats, "jitter", None) or 0
    return 1000.0 * jitter / rate if rate else 0.0


def snapshot_from_report(
    report: Mapping[str, Any],
    kind: str | None = "audio",
    *,
    clock_rates: Mapping[str, int] | None = None,
) -> tuple[InboundSnapshot | None, OutboundSnapshot | None]:
    """Extract inbound and outbound snapshots for ``kind`` from a peer connection's report.

    ``kind`` is ``"audio"``, ``"video"`` or ``None`` (both). Streams are combined as: packet
    counters summed; jitter, RTT and fraction lost take the worst (largest) stream, each
    converted with its own kind's clock rate. Returns None for a side with no matching
    entry (no inbound-rtp until the first packet from the peer arrives).
    """
    rates = DEFAULT_CLOCK_RATES if clock_rates is None else {**DEFAULT_CLOCK_RATES, **clock_rates}
    inbound: InboundSnapshot | None = None
    outbound: OutboundSnapshot | None = None
    remotes: list[Any] = []

    for stats in report.values():
        stype = getattr(stats, "type", None)
        if not _matches(stats, kind):
            continue
        if stype == "inbound-rtp":
            jitter = _jitter_ms(stats, rates)
            if inbound is None:
                inbound = InboundSnapshot(
                    packets_received=int(stats.packetsReceived),
                    packets_lost=int(stats.packetsLost),
                    jitter_ms=jitter,
                )
            else:
                inbound.packets_received += int(stats.packetsReceived)
                inbound.packets_lost += int(stats.packetsLost)
                inbound.jitter_ms = max(inbound.jitter_ms, jitter)
                inbound.streams += 1
        elif stype == "outbound-rtp":
            if outbound is None:
                outbound = OutboundSnapshot(packets_sent=int(stats.packetsSent))
            else:
                outbound.packets_sent += int(stats.packetsSent)
                outbound.streams += 1
        elif stype == "remote-inbound-rtp":
            remotes.append(stats)

    if outbound is not None:
        for r in remotes:
            rtt = getattr(r, "roundTripTime", None)
            if rtt is not None:
                rtt_ms = float(rtt) * 1000.0
                outbound.rtt_ms = (
                    rtt_ms if outbound.rtt_ms is None else max(outbound.rtt_ms, rtt_ms)
                )
            frac = getattr(r, "fractionLost", None)
            if frac is not None:
                f = int(frac)
                cur = outbound.remote_fraction_lost
                outbound.remote_fraction_lost = f if cur is None else max(cur, f)
            jitter = _jitter_ms(r, rates)
            cur_j = outbound.remote_jitter_ms
            outbound.remote_jitter_ms = jitter if cur_j is None else max(cur_j, jitter)
            lost = getattr(r, "packetsLost", None)
            if lost is not None:
                outbound.remote_packets_lost = (outbound.remote_packets_lost or 0) + int(lost)
    return inbound, outbound
