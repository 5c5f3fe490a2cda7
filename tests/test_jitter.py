"""AudioJitterBuffer (pure logic): in-order frames leave at once, a loss costs no backlog,
reordering raises the hold and it shrinks back; aiortc's own buffer side by side."""

from __future__ import annotations

import random

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from callkit.media.jitter import DECAY_PACKETS, MAX_HOLD, AudioJitterBuffer


def _packet(seq: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 960)
    packet._data = bytes([seq % 256])  # type: ignore[attr-defined]  (as aiortc's receiver)
    return packet


def _run(buffer: object, seqs: list[int]) -> list[tuple[int, int]]:
    """(sequence number in, timestamp // 960 out) for every frame handed out."""
    out = []
    for seq in seqs:
        _, frame = buffer.add(_packet(seq))  # type: ignore[attr-defined]
        if frame is not None:
            out.append((seq, frame.timestamp // 960))
    return out


def test_in_order_frames_leave_at_once_with_their_data() -> None:
    buffer = AudioJitterBuffer()
    for seq in range(65530, 65546):  # across the 16-bit wrap
        _, frame = buffer.add(_packet(seq))
        assert frame is not None and frame.timestamp == seq * 960
        assert frame.data == bytes([seq % 256])
    assert buffer.waiting() == 0 and buffer.lost == 0


def test_a_loss_costs_no_backlog_unlike_aiortcs_buffer() -> None:
    seqs = [s for s in range(300) if s not in (50, 120, 121)]
    ours = _run(AudioJitterBuffer(), seqs)
    assert all(seq_in == seq_out for seq_in, seq_out in ours)  # never a frame behind
    assert len(ours) == len(seqs)
    theirs = _run(JitterBuffer(capacity=16, prefetch=4), seqs)
    lag = [seq_in - seq_out for seq_in, seq_out in theirs]
    assert min(lag[:40]) >= 4  # prefetch: 80 ms from the start
    assert min(lag[-50:]) >= 10  # and after the first loss the backlog never drains


def test_reordering_raises_the_hold_and_it_shrinks_back() -> None:
    buffer = AudioJitterBuffer()
    assert _run(buffer, [0, 1, 3, 2, 4]) == [(0, 0), (1, 1), (3, 3), (4, 4)]
    assert (buffer.late, buffer.hold) == (1, 1)  # 2 came after it was given up
    assert _run(buffer, [6, 5, 7]) == [(5, 5), (7, 6)]  # now one frame waits behind
    assert buffer.late == 1 and buffer.waiting() == 1
    for _ in range(MAX_HOLD + 2):  # more late packets: the hold stops at aiortc's prefetch
        buffer.add(_packet(0))
    assert buffer.hold == MAX_HOLD
    start = 8
    _run(buffer, list(range(start, start + DECAY_PACKETS * (MAX_HOLD + 1))))
    assert buffer.hold == 0 and buffer.waiting() == 0  # back to no delay, frames dropped
    assert 0 < buffer.dropped <= MAX_HOLD + 1


def test_hostile_sequence_numbers_keep_it_bounded() -> None:
    rng = random.Random(14)
    buffer = AudioJitterBuffer()
    for base in range(20000):
        kind = rng.random()
        if kind < 0.05:
            seq = rng.randrange(65536)  # anything
        elif kind < 0.5:
            seq = base + rng.randrange(-6, 8)  # reordered, duplicated, lost
        else:
            seq = base
        pli, frame = buffer.add(_packet(seq))
        assert pli is False
        assert buffer.waiting() <= MAX_HOLD + 1
        assert frame is None or isinstance(frame.data, bytes)
    assert buffer.received == 20000
