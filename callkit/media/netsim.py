"""User-space network simulation for outgoing UDP datagrams.

A :class:`NetworkShaper` sits between aioice's ``StunProtocol`` and its socket (see
:mod:`media.icehooks`) and applies :class:`NetworkConditions` to every datagram an engine
sends: random or bursty loss, a bandwidth cap with a bounded queue, and delay with jitter.
No root privileges, no kernel qdisc: everything happens in the event loop.

Order of operations per datagram: loss decision -> rate-cap queue -> delay + jitter.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DatagramSink", "NetworkConditions", "NetworkCounts", "NetworkShaper"]

#: A datagram that would wait longer than this in the rate-cap queue is dropped (seconds).
MAX_QUEUE_DELAY = 0.5


@dataclass
class NetworkConditions:
    """Simulated conditions for the datagrams one engine sends.

    All defaults mean "ideal network": nothing dropped, delayed or capped.
    Raises :class:`ValueError` for out-of-range values.
    """

    loss: float = 0.0
    """Long-run fraction of datagrams dropped, in [0, 1]. 1.0 drops everything."""

    burst: float = 0.0
    """Probability, in [0, 1), that the datagram right after a lost one is lost too.

    Loss follows a two-state (Gilbert-Elliott-like) chain: after a lost datagram the loss
    state persists with probability ``q = max(burst, loss)``; after a delivered one a loss
    starts with probability ``loss * (1 - q) / (1 - loss)``, which keeps the long-run loss
    rate equal to ``loss``. So ``burst <= loss`` (including the default 0) means independent
    (Bernoulli) loss, and a larger ``burst`` makes loss runs longer (mean run length
    ``1 / (1 - q)``) without changing the average loss. 1.0 is rejected (endless runs).
    """

    delay_ms: float = 0.0
    """Extra one-way delay added to every datagram, in milliseconds (>= 0)."""

    jitter_ms: float = 0.0
    """Each datagram's delay varies uniformly within ``delay_ms +/- jitter_ms`` (never below
    zero), in milliseconds (>= 0). Jitter can reorder datagrams, as on a real network."""

    rate_kbps: float | None = None
    """Bandwidth cap in kilobits (1000 bits) per second, > 0, or None for no cap. Datagrams
    are serialised at this rate; one that would queue for more than 500 ms is dropped."""

    seed: int | None = None
    """Seed for the random generators. With a seed, the same sequence of datagrams gets the
    same loss decisions and jitter values. None: seeded from the OS."""

    def __post_init__(self) -> None:
        if not _in_range(self.loss, 0.0, 1.0):
            raise ValueError(f"loss must be in [0, 1], got {self.loss!r}")
        if not _in_range(self.burst, 0.0, 1.0) or self.burst == 1.0:
            raise ValueError(
                f"burst must be in [0, 1) (1.0 would make loss runs endless), got {self.burst!r}"
            )
        if not _finite_nonneg(self.delay_ms):
            raise ValueError(f"delay_ms must be a finite number >= 0, got {self.delay_ms!r}")
        if not _finite_nonneg(self.jitter_ms):
            raise ValueError(f"jitter_ms must be a finite number >= 0, got {self.jitter_ms!r}")
        if self.rate_kbps is not None and not (_is_number(self.rate_kbps) and self.rate_kbps > 0):
            raise ValueError(f"rate_kbps must be > 0 or None, got {self.rate_kbps!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    @property
    def is_ideal(self) -> bool:
        """True when these conditions change nothing (the shaper's pass-through path)."""
        return (
            self.loss == 0.0
            and self.delay_ms == 0.0
            and self.jitter_ms == 0.0
            and (self.rate_kbps is None or math.isinf(self.rate_kbps))
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _in_range(x: Any, lo: float, hi: float) -> bool:
    return _is_number(x) and lo <= x <= hi  # NaN fails the comparison


def _finite_nonneg(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x) and x >= 0


class DatagramSink(Protocol):
    """What the shaper sends through: an asyncio datagram transport (or a fake)."""

    def sendto(self, data: bytes, addr: Any = None) -> None: ...


@dataclass(frozen=True)
class NetworkCounts:
    """What the simulator did to an engine's outgoing datagrams so far (cumulative)."""

    #: handed to the socket (at once or after a delay)
    sent: int = 0
    #: lost on purpose (loss, burst loss, and ``overflowed``)
    dropped: int = 0
    #: dropped because the rate-cap queue was full (counted in ``dropped`` too)
    overflowed: int = 0
    #: sent after a simulated delay
    delayed: int = 0

    def __sub__(self, earlier: NetworkCounts) -> NetworkCounts:
        """The counts between ``earlier`` and this snapshot."""
        return NetworkCounts(
            self.sent - earlier.sent,
            self.dropped - earlier.dropped,
            self.overflowed - earlier.overflowed,
            self.delayed - earlier.delayed,
        )

    @property
    def loss(self) -> float:
        """The realized loss: dropped / (sent + dropped), 0.0 when nothing was offered."""
        offered = self.sent + self.dropped
        return self.dropped / offered if offered else 0.0


class NetworkShaper:
    """Applies :class:`NetworkConditions` to datagrams; conditions may change at any time.

    Counters (cumulative): ``sent`` (handed to a transport), ``dropped`` (lost, including
    ``overflowed``: dropped because the rate-cap queue was full), ``delayed`` (scheduled with
    ``loop.call_later`` instead of sent at once). With ideal conditions every datagram is
    passed straight to ``transport.sendto``.
    """

    def __init__(self, conditions: NetworkConditions | None = None) -> None:
        self.sent = 0
        self.dropped = 0
        self.overflowed = 0
        self.delayed = 0
        self._loss_rng = random.Random()
        self._jitter_rng = random.Random()
        self._in_loss = False
        self._busy_until = 0.0  # loop time at which the rate-capped link becomes idle
        self._conditions = NetworkConditions()
        self._ideal = True
        self._p_enter = 0.0
        self._p_stay = 0.0
        self.inbound: NetworkShaper | None = None
        """The shaper of the datagrams received on the same sockets (None: untouched); see
        :meth:`set_inbound_conditions`."""
        self.set_conditions(conditions if conditions is not None else NetworkConditions())

    @property
    def conditions(self) -> NetworkConditions:
        """The conditions currently applied."""
        return self._conditions

    def set_conditions(self, conditions: NetworkConditions) -> None:
        """Apply new conditions to datagrams sent from now on.

        A non-None ``seed`` re-seeds the generators and resets the loss state, so runs are
        repeatable; with ``seed=None`` the current generators carry on. Datagrams already
        delayed keep their schedule.
        """
        if not isinstance(conditions, NetworkConditions):
            raise TypeError(f"expected NetworkConditions, got {type(conditions).__name__}")
        if conditions.seed is not None:
            self._loss_rng.seed(conditions.seed)
            self._jitter_rng.seed(f"jitter-{conditions.seed}")
            self._in_loss = False
        loss = conditions.loss
        q = max(conditions.burst, loss)
        self._p_stay = q
        self._p_enter = 1.0 if loss >= 1.0 else loss * (1.0 - q) / (1.0 - loss)
        self._conditions = conditions
        self._ideal = conditions.is_ideal

    def set_inbound_conditions(self, conditions: NetworkConditions) -> None:
        """Apply ``conditions`` to the datagrams received from now on (through
        :attr:`inbound`, its own shaper and counters)."""
        if self.inbound is None:
            self.inbound = NetworkShaper(conditions)
        else:
            self.inbound.set_conditions(conditions)

    def counts(self) -> NetworkCounts:
        """A snapshot of the counters."""
        return NetworkCounts(self.sent, self.dropped, self.overflowed, self.delayed)

    def reset_counters(self) -> None:
        """Zero the counters."""
        self.sent = self.dropped = self.overflowed = self.delayed = 0

    def _lose(self) -> bool:
        if self._conditions.loss >= 1.0:
            self._in_loss = True
            return True
        p = self._p_stay if self._in_loss else self._p_enter
        lost = self._loss_rng.random() < p
        self._in_loss = lost
        return lost

    def send(self, transport: DatagramSink, data: bytes, addr: Any = None) -> None:
        """Send ``data`` to ``addr`` through ``transport`` under the current conditions."""
        if self._ideal:
            transport.sendto(data, addr)
            self.sent += 1
            return
        c = self._conditions
        if c.loss > 0.0 and self._lose():
            self.dropped += 1
            return
        delay = 0.0
        loop: asyncio.AbstractEventLoop | None = None
        if c.rate_kbps is not None and not math.isinf(c.rate_kbps):
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._busy_until)
            wait = start - now
            if wait > MAX_QUEUE_DELAY:
                self.dropped += 1
                self.overflowed += 1
                return
            tx = len(data) * 8.0 / (c.rate_kbps * 1000.0)
            self._busy_until = start + tx
            delay = wait + tx
        if c.delay_ms or c.jitter_ms:
            d = c.delay_ms
            if c.jitter_ms:
                d += self._jitter_rng.uniform(-c.jitter_ms, c.jitter_ms)
            delay += max(0.0, d) / 1000.0
        if delay <= 0.0:
            transport.sendto(data, addr)
            self.sent += 1
            return
        if loop is None:
            loop = asyncio.get_running_loop()
        self.delayed += 1
        loop.call_later(delay, self._deliver, transport, data, addr)

    def _deliver(self, transport: DatagramSink, data: bytes, addr: Any) -> None:
        is_closing = getattr(transport, "is_closing", None)
        if is_closing is not None and is_closing():
            return
        try:
            transport.sendto(data, addr)
        except (OSError, RuntimeError):
            return
        self.sent += 1

    def __repr__(self) -> str:
        return (
            f"NetworkShaper({self._conditions!r}, sent={self.sent}, dropped={self.dropped}, "
            f"delayed={self.delayed})"
        )
