"""An audio jitter buffer that waits for a missing packet only as long as reordering needs.

aiortc's audio receiver (1.16) reassembles with ``JitterBuffer(capacity=16, prefetch=4)``: a
frame leaves only once four later frames are in, and a lost packet blocks everything until
16 packets have piled up behind it. Since the receiver hands out one frame per packet that
arrives, that backlog never drains: after the first loss every frame comes ~300 ms late for
the rest of the call (aiortc issue 543).

:class:`AudioJitterBuffer` has the same ``add(packet) -> (pli, frame)`` contract (one Opus
packet is one frame) and keeps ``hold`` packets of slack for reordering:

* in order, a packet leaves at once (no prefetch);
* a missing packet is given up once more than ``hold`` later packets are waiting; :meth:`push`
  says how many were given up before the packet it hands out, so the receiver can conceal
  them (:mod:`callkit.media.receiver`);
* a packet that arrives after it was given up is dropped and raises ``hold`` by one
  (up to ``MAX_HOLD``, aiortc's prefetch); after ``DECAY_PACKETS`` packets (5 s of audio)
  without such a late packet ``hold`` goes down by one, and the oldest waiting frame is dropped
  if more than ``hold`` wait, so the delay shrinks back.

Installed per receiver by :func:`callkit.media._compat.use_jitter_buffer`, for the audio of
callkit's own peer sessions only.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterFrame

__all__ = ["DECAY_PACKETS", "MAX_HOLD", "AudioJitterBuffer"]

#: most packets waited for a missing one (aiortc's audio prefetch)
MAX_HOLD = 4
#: packets without a late arrival before ``hold`` shrinks by one (5 s of 20 ms frames)
DECAY_PACKETS = 250
#: a jump this far (either way) is a new stream, not loss or reordering
_RESTART = 100


def _delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in [-32768, 32767]."""
    return (a - b + 0x8000) % 0x10000 - 0x8000


class AudioJitterBuffer:
    """Reorders the audio RTP packets of one receiver (see the module docstring)."""

    def __init__(self, hold: int = 0) -> None:
        self.hold = max(0, min(MAX_HOLD, hold))
        self._next: int | None = None  # sequence number of the next frame to hand out
        self._waiting: dict[int, Any] = {}
        self._since_late = 0
        #: counters, for tests and benchmarks
        self.received = 0
        self.lost = 0
        self.late = 0
        self.dropped = 0

    @property
    def capacity(self) -> int:
        """The most packets ever kept (aiortc's buffers expose it)."""
        return MAX_HOLD + 1

    def waiting(self) -> int:
        """Frames received but not handed out yet."""
        return len(self._waiting)

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        """Take one RTP packet (with ``_data`` set, as aiortc's receiver does); return
        ``(False, frame)`` with the next frame to decode, if one is due."""
        _, out = self.push(packet)
        if out is None:
            return False, None
        return False, JitterFrame(data=out._data, timestamp=out.timestamp)

    def push(self, packet: Any) -> tuple[int, Any | None]:
        """Take one RTP packet; return ``(given_up, packet_out)``: the next packet to decode
        (or None) and how many missing packets were given up just before it (to conceal)."""
        seq = packet.sequence_number
        given_up = 0
        self.received += 1
        if self._next is None:
            self._next = seq
        ahead = _delta(seq, self._next)
        if ahead < 0:
            if ahead > -_RESTART:  # given up already (or a duplicate): too late to play
                self.late += 1
                self._since_late = 0
                self.hold = min(MAX_HOLD, self.hold + 1)
                return 0, None
            ahead = _RESTART  # a restarted stream: start over below
        if ahead >= _RESTART:
            self.dropped += len(self._waiting)
            self._waiting.clear()
            self._next, ahead = seq, 0
        self._waiting[seq] = packet
        self._since_late += 1
        if self._since_late >= DECAY_PACKETS and self.hold > 0:
            self._since_late = 0
            self.hold -= 1
        if self._next not in self._waiting and len(self._waiting) > self.hold:
            first = min(self._waiting, key=lambda s: _delta(s, self._next))  # type: ignore[arg-type]
            given_up = _delta(first, self._next)
            self.lost += given_up
            self._next = first
        while len(self._waiting) > self.hold + 1 and self._next in self._waiting:
            del self._waiting[self._next]  # shrinking: the oldest waiting frame goes
            self.dropped += 1
            given_up = 0  # what was given up lies before the dropped frame: nothing to conceal
            self._next = (self._next + 1) % 0x10000
        out = self._waiting.pop(self._next, None)
        if out is None:
            return 0, None
        self._next = (self._next + 1) % 0x10000
        return given_up, out
