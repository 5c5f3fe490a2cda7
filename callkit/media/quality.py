"""Network quality levels from RTCP-style measurements (pure: no I/O, time passed in).

The score is a simplified E-model (ITU-T G.107) as specified in DESIGN section 4:

    d  = RTT/2 + 2 * jitter                       (ms, effective one-way delay)
    Id = 0.024*d + 0.11*(d - 177.3) if d > 177.3 else 0.024*d
    P  = loss in percent
    S  = 100 - Id - 100*P / (P + 10)

Levels use TUICallKit's NetworkQuality numbers: UNKNOWN 0, EXCELLENT 1, GOOD 2, POOR 3,
BAD 4, VERY_BAD 5, DOWN 6. With no delay (d = 0) the loss-only cut-offs are 2.5 / 4.29 /
6.67 / 10 % (where S crosses 80 / 70 / 60 / 50). Delay alone: S falls below 80 at d = 295 ms
(RTT 590 ms with no jitter), below 60 at d = 444 ms and below 50 at d = 519 ms.

:class:`QualityTracker` turns cumulative packet counters sampled over time into levels, with
loss measured over an adaptive sliding window (:class:`LossWindow`) and DOWN after 3 s of
silence; :class:`RttWindow` keeps the median RTT of recent samples.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from enum import IntEnum

__all__ = [
    "BAD",
    "DOWN",
    "DOWN_AFTER",
    "EXCELLENT",
    "GOOD",
    "POOR",
    "UNKNOWN",
    "VERY_BAD",
    "LossWindow",
    "NetworkQuality",
    "QualityTracker",
    "RttWindow",
    "level_from_score",
    "quality",
    "score",
    "uplink_quality",
    "worst_quality",
]


class NetworkQuality(IntEnum):
    """TUICallKit's NetworkQuality, as reported in ``onUserNetworkQualityChanged``."""

    UNKNOWN = 0
    EXCELLENT = 1
    GOOD = 2
    POOR = 3
    BAD = 4
    VERY_BAD = 5
    DOWN = 6


UNKNOWN, EXCELLENT, GOOD, POOR, BAD, VERY_BAD, DOWN = NetworkQuality

#: Seconds without any new packet after which a remote user is DOWN.
DOWN_AFTER = 3.0


def score(rtt_ms: float, jitter_ms: float, loss_pct: float) -> float:
    """Return the quality score S (100 best; may go negative) per DESIGN section 4.

    Negative or NaN inputs are treated as 0; ``loss_pct`` is clamped to [0, 100].
    """
    rtt_ms = _clean(rtt_ms)
    jitter_ms = _clean(jitter_ms)
    p = min(100.0, _clean(loss_pct))
    d = rtt_ms / 2.0 + 2.0 * jitter_ms
    i_d = 0.024 * d + 0.11 * (d - 177.3) if d > 177.3 else 0.024 * d
    return 100.0 - i_d - 100.0 * p / (p + 10.0)


def level_from_score(s: float) -> NetworkQuality:
    """Map a score to a level: >=80 EXCELLENT(1), >=70 GOOD(2), >=60 POOR(3), >=50 BAD(4),
    else VERY_BAD(5)."""
    if s >= 80.0:
        return EXCELLENT
    if s >= 70.0:
        return GOOD
    if s >= 60.0:
        return POOR
    if s >= 50.0:
        return BAD
    return VERY_BAD


def quality(rtt_ms: float | None, jitter_ms: float | None, loss_pct: float) -> NetworkQuality:
    """Level (1-5) for one measurement; a missing RTT or jitter counts as 0 ms."""
    return level_from_score(score(rtt_ms or 0.0, jitter_ms or 0.0, loss_pct))


def uplink_quality(
    fraction_lost_255: int, jitter_ms: float, rtt_ms: float | None
) -> NetworkQuality:
    """Level (1-5) of our uplink to one peer, from that peer's latest RTCP receiver report.

    ``fraction_lost_255`` is the report's 8-bit fraction lost (0-255, lost/expected * 256
    over the interval since the peer's previous report, about 0.5-1.5 s in aiortc), so
    loss % = fraction / 256 * 100. ``jitter_ms`` is the interarrival jitter the peer
    reported (already converted to ms), ``rtt_ms`` our RTT estimate (None counts as 0).
    The local user's level is the worst over all peers: see :func:`worst_quality`.
    """
    frac = max(0, min(255, int(fraction_lost_255)))
    return quality(rtt_ms, jitter_ms, frac / 256.0 * 100.0)


def worst_quality(levels: Iterable[int]) -> NetworkQuality:
    """Worst of several levels (DOWN > VERY_BAD > ... > EXCELLENT); UNKNOWN entries are
    ignored; UNKNOWN if there is nothing else."""
    known = [lv for lv in levels if lv != UNKNOWN]
    return NetworkQuality(max(known)) if known else UNKNOWN


def _clean(x: float | None) -> float:
    if x is None or not isinstance(x, (int, float)) or math.isnan(x) or x < 0:
        return 0.0
    return float(x)


class LossWindow:
    """Packet loss over a sliding window, shortened when the loss rate clearly changed.

    Feed it per-interval deltas with :meth:`add` (``expected`` packets, of which ``lost``
    were lost; ``lost`` may be negative when late or duplicate packets correct an earlier
    count). :meth:`loss_pct` returns ``100 * lost / expected`` over the samples of the last
    ``span`` seconds, with the sum of ``lost`` clamped to ``[0, expected]``.

    A long window makes small loss rates measurable (3 % of the ~100 audio packets of 2 s is
    3 packets, give or take 1.7), but it would make the level lag behind real changes. So the
    window adapts: when the loss rate of the last ``recent`` seconds differs from that of the
    older part of the window by ``z`` standard errors or more (a two-proportion z-test, both
    parts holding at least ``min_packets``), the older samples are dropped and the window
    grows again from there. A steady 3 % then reads from up to ``span`` seconds of packets,
    while a jump from 0 % to 20 % (or back) shows within ``recent`` seconds.
    """

    def __init__(
        self, span: float = 6.0, recent: float = 2.0, *, z: float = 3.0, min_packets: int = 20
    ) -> None:
        if not 0 < recent <= span:
            raise ValueError(f"need 0 < recent <= span, got recent={recent!r} span={span!r}")
        self.span = float(span)
        self.recent = float(recent)
        self.z = float(z)
        self.min_packets = int(min_packets)
        self._samples: deque[tuple[float, int, int]] = deque()
        self.changes = 0
        """How many times a clear change cut the window short."""

    def add(self, t: float, expected: int, lost: int) -> None:
        """Add an interval ending at ``t`` with ``expected`` packets, ``lost`` of them lost."""
        if expected or lost:
            self._samples.append((t, int(expected), int(lost)))

    def clear(self) -> None:
        """Forget every sample (e.g. after an outage)."""
        self._samples.clear()

    def packets(self, now: float) -> int:
        """Packets expected in the current window."""
        self._expire(now)
        return sum(e for _, e, _ in self._samples)

    def loss_pct(self, now: float) -> float | None:
        """Loss in percent over the window ending at ``now``; None if it holds no packets."""
        self._expire(now)
        split = now - self.recent
        old_e = old_l = new_e = new_l = 0
        for t, e, lost in self._samples:
            if t > split:
                new_e += e
                new_l += lost
            else:
                old_e += e
                old_l += lost
        if (
            old_e >= self.min_packets
            and new_e >= self.min_packets
            and _differs(old_l, old_e, new_l, new_e, self.z)
        ):
            while self._samples and self._samples[0][0] <= split:
                self._samples.popleft()
            self.changes += 1
            old_e = old_l = 0
        total_e, total_l = old_e + new_e, old_l + new_l
        if total_e <= 0:
            return None
        return 100.0 * min(max(total_l, 0), total_e) / total_e

    def _expire(self, now: float) -> None:
        cutoff = now - self.span
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()


def _differs(l1: int, n1: int, l2: int, n2: int, z: float) -> bool:
    """Two-proportion z-test: do l1/n1 and l2/n2 differ by at least ``z`` standard errors?"""
    l1 = min(max(l1, 0), n1)
    l2 = min(max(l2, 0), n2)
    p = (l1 + l2) / (n1 + n2)
    if p <= 0.0 or p >= 1.0:
        return False
    se = math.sqrt(p * (1.0 - p) * (1.0 / n1 + 1.0 / n2))
    return abs(l1 / n1 - l2 / n2) >= z * se


class RttWindow:
    """Round-trip time: the median of the samples of the last ``span`` seconds.

    When no sample is that recent the last one is kept (an RTT does not go away because
    reports were lost). None before the first sample.
    """

    def __init__(self, span: float = 6.0) -> None:
        self.span = float(span)
        self._samples: deque[tuple[float, float]] = deque()
        self._last: float | None = None

    def add(self, t: float, rtt_ms: float) -> None:
        """Add one RTT sample (ms) measured at ``t``; negative or NaN samples are ignored."""
        if isinstance(rtt_ms, (int, float)) and not math.isnan(rtt_ms) and rtt_ms >= 0:
            self._samples.append((t, float(rtt_ms)))
            self._last = float(rtt_ms)

    def value(self, now: float) -> float | None:
        """The median of the window, else the last sample, else None."""
        cutoff = now - self.span
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()
        if not self._samples:
            return self._last
        return float(statistics.median(v for _, v in self._samples))


class QualityTracker:
    """Quality of one direction of one link (what we receive from a user, or what a peer
    receives from us), from cumulative packet counters sampled over time.

    :meth:`add` the CUMULATIVE ``packets_received`` / ``packets_lost`` of the stream whenever
    they are read (the engine samples every 0.5 s; for the uplink, at every RTCP receiver
    report); :meth:`evaluate` returns the level at a given time; :meth:`update` does both.

    * Loss comes from a :class:`LossWindow` of the counter deltas (up to ``loss_span`` s,
      cut to ``loss_recent`` s on a clear change). ``expected`` of an interval is
      ``received delta + lost delta``. A received counter that goes backwards is a new
      stream: its values count from zero (``from_zero``) or become the new baseline.
    * With ``from_zero=True`` (counters of a stream that starts at 0, like aiortc's
      inbound-rtp) the first :meth:`add` already counts; with ``False`` (e.g. RTCP receiver
      reports, whose sequence numbers start anywhere) it only sets the baseline.
    * DOWN when ``connection_failed`` or when no new packet arrived for ``down_after``
      seconds (3 s). Arrival time is ``last_packet_at`` when given (more precise than the
      sampling), else the time of the sample in which ``packets_received`` grew. The clock
      starts at the first :meth:`add`, so a stream from which nothing ever arrives becomes
      DOWN ``down_after`` seconds after tracking began.
    * Packets lost while DOWN are the outage, already reported as DOWN: when packets come
      back, the loss history is cleared and the lost delta of that sample is not counted.
    * UNKNOWN until the first interval that contains packets. Missing jitter or RTT (None,
      e.g. before the first RTCP report) count as 0 ms.
    """

    def __init__(
        self,
        *,
        down_after: float = DOWN_AFTER,
        loss_span: float = 6.0,
        loss_recent: float = 2.0,
        from_zero: bool = True,
    ) -> None:
        self.down_after = down_after
        self.loss = LossWindow(loss_span, loss_recent)
        self.from_zero = from_zero
        self.level = UNKNOWN
        """The level returned by the last :meth:`evaluate`."""
        self.last_loss_pct: float | None = None
        """Loss % of the window at the last :meth:`evaluate` that had packets."""
        self.last_score: float | None = None
        """Score at the last :meth:`evaluate` that had packets."""
        self.last_packet_at: float | None = None
        """When a new packet was last seen (or tracking began)."""
        self._prev: tuple[int, int] | None = None
        self._silent = False

    def add(
        self,
        now: float,
        *,
        packets_received: int,
        packets_lost: int,
        last_packet_at: float | None = None,
    ) -> None:
        """Record the cumulative counters read at ``now``."""
        recv, lost = int(packets_received), int(packets_lost)
        if self._prev is None:
            self.last_packet_at = now if last_packet_at is None else last_packet_at
            base = (0, 0) if self.from_zero else (recv, lost)
        elif recv < self._prev[0]:  # a new stream
            base = (0, 0) if self.from_zero else (recv, lost)
        else:
            base = self._prev
        self._prev = (recv, lost)
        d_recv, d_lost = recv - base[0], lost - base[1]
        if d_recv > 0:
            seen = now if last_packet_at is None else min(now, last_packet_at)
            if self.last_packet_at is None or seen > self.last_packet_at:
                self.last_packet_at = seen
            if self._silent:  # back after an outage: the outage is not "loss"
                self._silent = False
                self.loss.clear()
                d_lost = 0
        elif (
            last_packet_at is not None
            and self.last_packet_at is not None
            and last_packet_at > self.last_packet_at
        ):
            self.last_packet_at = min(now, last_packet_at)
        self.loss.add(now, d_recv + d_lost, d_lost)

    def evaluate(
        self,
        now: float,
        *,
        jitter_ms: float | None,
        rtt_ms: float | None,
        connection_failed: bool = False,
    ) -> int:
        """The level at ``now`` (also stored in :attr:`level`)."""
        if connection_failed:
            self.level = DOWN
            return self.level
        if self.last_packet_at is not None and now - self.last_packet_at >= self.down_after:
            self._silent = True
            self.level = DOWN
            return self.level
        loss = self.loss.loss_pct(now)
        if loss is not None:
            self.last_loss_pct = loss
            self.last_score = score(rtt_ms or 0.0, jitter_ms or 0.0, loss)
            self.level = level_from_score(self.last_score)
        elif self.level == DOWN:
            self.level = UNKNOWN if self.last_score is None else level_from_score(self.last_score)
        return self.level

    def update(
        self,
        now: float,
        *,
        packets_received: int,
        packets_lost: int,
        jitter_ms: float | None,
        rtt_ms: float | None,
        connection_failed: bool = False,
        last_packet_at: float | None = None,
    ) -> int:
        """:meth:`add` then :meth:`evaluate`; returns the level."""
        self.add(
            now,
            packets_received=packets_received,
            packets_lost=packets_lost,
            last_packet_at=last_packet_at,
        )
        return self.evaluate(
            now, jitter_ms=jitter_ms, rtt_ms=rtt_ms, connection_failed=connection_failed
        )
