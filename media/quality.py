"""Network quality levels from RTCP-style measurements (pure: no I/O, time passed in).

The score is a simplified E-model (ITU-T G.107) as specified in DESIGN section 4:

    d  = RTT/2 + 2 * jitter                       (ms, effective one-way delay)
    Id = 0.024*d + 0.11*(d - 177.3) if d > 177.3 else 0.024*d
    P  = loss in percent
    S  = 100 - Id - 100*P / (P + 10)

Levels use TUICallKit's NetworkQuality numbers: UNKNOWN 0, EXCELLENT 1, GOOD 2, POOR 3,
BAD 4, VERY_BAD 5, DOWN 6. With no delay (d = 0) the loss-only cut-offs are 2.5 / 4.29 /
6.67 / 10 % (where S crosses 80 / 70 / 60 / 50).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "BAD",
    "DOWN",
    "DOWN_AFTER",
    "EXCELLENT",
    "GOOD",
    "POOR",
    "UNKNOWN",
    "VERY_BAD",
    "QualityTracker",
    "level_from_score",
    "quality",
    "score",
    "uplink_quality",
    "worst_quality",
]

UNKNOWN = 0
EXCELLENT = 1
GOOD = 2
POOR = 3
BAD = 4
VERY_BAD = 5
DOWN = 6

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


def level_from_score(s: float) -> int:
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


def quality(rtt_ms: float | None, jitter_ms: float | None, loss_pct: float) -> int:
    """Level (1-5) for one measurement; a missing RTT or jitter counts as 0 ms."""
    return level_from_score(score(rtt_ms or 0.0, jitter_ms or 0.0, loss_pct))


def uplink_quality(fraction_lost_255: int, jitter_ms: float, rtt_ms: float | None) -> int:
    """Level (1-5) of our uplink to one peer, from that peer's latest RTCP receiver report.

    ``fraction_lost_255`` is the report's 8-bit fraction lost (0-255, lost/expected * 256
    over the interval since the peer's previous report, about 0.5-1.5 s in aiortc), so
    loss % = fraction / 256 * 100. ``jitter_ms`` is the interarrival jitter the peer
    reported (already converted to ms), ``rtt_ms`` our RTT estimate (None counts as 0).
    The local user's level is the worst over all peers: see :func:`worst_quality`.
    """
    frac = max(0, min(255, int(fraction_lost_255)))
    return quality(rtt_ms, jitter_ms, frac / 256.0 * 100.0)


def worst_quality(levels: Iterable[int]) -> int:
    """Worst of several levels (DOWN > VERY_BAD > ... > EXCELLENT); UNKNOWN entries are
    ignored; UNKNOWN if there is nothing else."""
    known = [lv for lv in levels if lv != UNKNOWN]
    return max(known) if known else UNKNOWN


def _clean(x: float | None) -> float:
    if x is None or not isinstance(x, (int, float)) or math.isnan(x) or x < 0:
        return 0.0
    return float(x)


class QualityTracker:
    """Downlink quality of one remote user, updated once per window (every 2 s).

    Feed it the CUMULATIVE counters of the inbound stream(s) from that user (as in
    ``inbound-rtp`` stats). Choices:

    * Loss % of a window = lost delta / (received delta + lost delta) between two updates.
      A negative lost delta (duplicates / late packets correcting the count) counts as 0.
      A received counter that goes backwards means a new stream: the new values become
      the baseline and the window is measured from zero.
    * DOWN when ``connection_failed`` or when ``packets_received`` has not grown for
      ``down_after`` seconds (3 s). The clock starts at the first update, so a user from
      whom nothing ever arrives becomes DOWN 3 s after tracking began rather than staying
      UNKNOWN forever; call the first update when the peer connection is up.
    * UNKNOWN until the first window that contains packets; a later window with no new
      packets (but not yet DOWN) keeps the previous level.
    * Missing jitter or RTT (None, e.g. before the first RTCP report) count as 0 ms.
    """

    def __init__(self, *, down_after: float = DOWN_AFTER) -> None:
        self.down_after = down_after
        self.level = UNKNOWN
        """The level returned by the last :meth:`update`."""
        self.last_loss_pct: float | None = None
        """Loss % of the last window that had packets."""
        self.last_score: float | None = None
        """Score of the last window that had packets."""
        self._prev_received: int | None = None
        self._prev_lost = 0
        self._last_growth: float | None = None

    def update(
        self,
        now: float,
        *,
        packets_received: int,
        packets_lost: int,
        jitter_ms: float | None,
        rtt_ms: float | None,
        connection_failed: bool = False,
    ) -> int:
        """Close the window ending at ``now`` (seconds, any monotonic clock); return the level."""
        if self._prev_received is None:
            self._last_growth = now  # the DOWN clock starts with tracking
            d_recv, d_lost = packets_received, max(0, packets_lost)
        elif packets_received < self._prev_received:
            d_recv, d_lost = packets_received, max(0, packets_lost)  # new stream
        else:
            d_recv = packets_received - self._prev_received
            d_lost = max(0, packets_lost - self._prev_lost)
        self._prev_received = packets_received
        self._prev_lost = packets_lost
        if d_recv > 0:
            self._last_growth = now

        if connection_failed:
            self.level = DOWN
            return self.level
        if d_recv > 0:
            self.last_loss_pct = 100.0 * d_lost / (d_recv + d_lost)
            self.last_score = score(rtt_ms or 0.0, jitter_ms or 0.0, self.last_loss_pct)
            self.level = level_from_score(self.last_score)
        elif self._last_growth is not None and now - self._last_growth >= self.down_after:
            self.level = DOWN
        return self.level
