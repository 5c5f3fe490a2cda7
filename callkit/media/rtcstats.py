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

aiortc's own ``roundTripTime`` is smoothed (0.85 old + 0.15 new) and sampled only when a
report echoes the sender's *latest* SR, which with a long delay is rare; its
``remote-inbound-rtp`` keeps only the latest report and no extended highest sequence number,
so a peer that receives nothing looks like a peer that loses nothing. :func:`rtcp_log`
therefore records, per ``RTCRtpSender``, every RTCP receiver-report block about its stream
(:class:`ReportBlock`) and an RTT sample for each block that echoes any of the sender's recent
SRs (RFC 3550 section 6.4.1: ``RTT = arrival - SR send time - DLSR``). The hooks wrap
``RTCRtpSender._send_rtcp`` and ``_handle_rtcp_packet`` once, at import (through
:mod:`callkit.media._compat`); they only record.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

from callkit.media import _compat

__all__ = [
    "DEFAULT_CLOCK_RATES",
    "InboundSnapshot",
    "OutboundSnapshot",
    "ReportBlock",
    "RtcpLog",
    "install_rtcp_hooks",
    "rtcp_log",
    "snapshot_from_report",
]

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


# --------------------------------------------------------------------------- RTCP hooks

_SR_HISTORY = 16  # SRs remembered per sender for RTT (aiortc sends one every 0.5-1.5 s)
_BLOCK_HISTORY = 256


def _now() -> float:
    """The event loop's clock (what the engine passes as ``now``), else ``time.monotonic``."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass
class ReportBlock:
    """One RTCP report block a peer sent about our stream (RR or SR), as received."""

    at: float
    """Arrival time (event-loop clock, seconds)."""
    highest_seq: int
    """Extended highest sequence number received, unwrapped by us (aiortc sends only the
    16-bit sequence number, without the cycle count)."""
    packets_lost: int
    """Cumulative packets lost, as reported."""
    fraction_lost: int
    """Fraction lost since the previous report, 0-255 (divide by 256)."""
    jitter: int
    """Interarrival jitter in RTP timestamp units of our codec clock."""
    rtt_ms: float | None
    """The RTT sample this block gave (ms), None if it echoed no SR we remember."""


class RtcpLog:
    """What RTCP tells one ``RTCRtpSender`` about its stream: report blocks and RTT samples.

    Consumers call :meth:`take_blocks` to get the blocks that arrived since their previous
    call (one consumer per sender: the engine's quality monitor).
    """

    def __init__(self) -> None:
        self.blocks: deque[ReportBlock] = deque(maxlen=_BLOCK_HISTORY)
        """Recent report blocks, oldest first."""
        self.last_block: ReportBlock | None = None
        self.packets_sent = 0
        """Packet count of our latest SR (cumulative RTP packets sent)."""
        self.srs_sent = 0
        self._sr_times: OrderedDict[int, float] = OrderedDict()
        self._ext_seq: int | None = None
        self._taken = 0
        self._added = 0

    @property
    def rtt_ms(self) -> float | None:
        """The latest RTT sample (ms), None before the first."""
        for block in reversed(self.blocks):
            if block.rtt_ms is not None:
                return block.rtt_ms
        return None

    def take_blocks(self) -> list[ReportBlock]:
        """Blocks received since the previous call, oldest first."""
        new = self._added - self._taken
        self._taken = self._added
        if new <= 0:
            return []
        return list(self.blocks)[-min(new, len(self.blocks)) :]

    # -- recording (called by the hooks) ---------------------------------------------------
    def sr_sent(self, lsr: int, packet_count: int, at: float) -> None:
        self._sr_times[lsr] = at
        self._sr_times.move_to_end(lsr)
        while len(self._sr_times) > _SR_HISTORY:
            self._sr_times.popitem(last=False)
        self.packets_sent = packet_count
        self.srs_sent += 1

    def block_received(self, report: Any, at: float) -> ReportBlock:
        seq = int(report.highest_sequence) & 0xFFFF
        if self._ext_seq is None:
            ext = seq
        else:
            delta = (seq - self._ext_seq) & 0xFFFF
            # forward within half the sequence space, else a late (older) report
            ext = self._ext_seq + delta if delta < 0x8000 else self._ext_seq - (0x10000 - delta)
        self._ext_seq = max(ext, self._ext_seq if self._ext_seq is not None else ext)
        rtt = None
        sent = self._sr_times.get(int(report.lsr)) if report.lsr else None
        if sent is not None:
            sample = at - sent - report.dlsr / 65536.0
            if sample >= 0:
                rtt = sample * 1000.0
        block = ReportBlock(
            at=at,
            highest_seq=ext,
            packets_lost=int(report.packets_lost),
            fraction_lost=int(report.fraction_lost),
            jitter=int(report.jitter),
            rtt_ms=rtt,
        )
        self.blocks.append(block)
        self.last_block = block
        self._added += 1
        return block


_logs: weakref.WeakKeyDictionary[Any, RtcpLog] = weakref.WeakKeyDictionary()


def rtcp_log(sender: Any) -> RtcpLog:
    """The :class:`RtcpLog` of an ``RTCRtpSender`` (created empty on first use)."""
    log = _logs.get(sender)
    if log is None:
        log = _logs[sender] = RtcpLog()
    return log


def _rtcp_sent(sender: RTCRtpSender, packets: list[Any]) -> None:
    for packet in packets:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            rtcp_log(sender).sr_sent(
                (info.ntp_timestamp >> 16) & 0xFFFFFFFF, info.packet_count, _now()
            )


def _rtcp_received(sender: RTCRtpSender, packet: Any) -> None:
    if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
        ssrc = _compat.sender_ssrc(sender)
        at = _now()
        for report in packet.reports:
            if report.ssrc == ssrc:
                rtcp_log(sender).block_received(report, at)


def install_rtcp_hooks() -> None:
    """Make aiortc's senders fill :func:`rtcp_log` (idempotent; done at import). The patch of
    ``RTCRtpSender`` itself lives in :mod:`callkit.media._compat`."""
    _compat.patch_sender_rtcp(_rtcp_sent, _rtcp_received)


install_rtcp_hooks()
