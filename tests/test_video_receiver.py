"""callkit.media.videoreceiver: real VP8 RTP packets (aiortc's encoder and packetizer) through
VideoReceiver: in-loop decoding within its bounds, the worker thread for what is not, and the
attacks on it (a flood beyond the budget, an oversized picture, garbage, a full worker queue).
The replacement inside a real aiortc receiver is tested in tests/test_compat.py."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.rtp import RtpPacket

from callkit.media import videoreceiver
from callkit.media.sources import TestPatternSource
from callkit.media.videoreceiver import VideoReceiver, vp8_keyframe_size

PT = 96


class _Receiver:
    """What VideoReceiver asks an aiortc receiver: the codec of payload type 96."""

    def __init__(self) -> None:
        self._RTCRtpReceiver__codecs = {
            PT: RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=PT)
        }


def _stream(width: int, height: int, frames: int, keyframes: tuple[int, ...] = ()) -> list[Any]:
    """RTP packets of ``frames`` VP8 frames of a moving test pattern (frame 0 and the listed
    ones keyframes), as aiortc's receiver hands them to its jitter buffer (``_data`` set)."""
    source, encoder = TestPatternSource(width, height, 15), Vp8Encoder()
    packets, seq = [], 1000
    for i in range(frames):
        frame = source.read()
        frame.pts, frame.time_base = i * 6000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, i in keyframes)
        for payload in payloads:
            packet = RtpPacket(payload_type=PT, sequence_number=seq, timestamp=timestamp)
            packet._data = vp8_depayload(payload)  # type: ignore[attr-defined]
            packets.append(packet)
            seq += 1
    return packets


def _frames(packets: list[Any]) -> list[list[Any]]:
    """Packets grouped by frame (timestamp)."""
    out: list[list[Any]] = []
    for p in packets:
        if out and out[-1][0].timestamp == p.timestamp:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _indices(frames: list[av.VideoFrame]) -> list[int]:
    """Frame numbers of decoded frames (pts in the 90 kHz clock, 6000 a frame, +-1 of
    aiortc's rounding)."""
    return [round(f.pts / 6000) for f in frames]


async def _settle(path: VideoReceiver, frames: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while path.decoded + path.failed < frames:
        assert time.monotonic() < deadline, f"only {path.decoded} of {frames} frames decoded"
        await asyncio.sleep(0.01)


def test_keyframe_sizes_are_read_from_the_vp8_header() -> None:
    frames = _frames(_stream(320, 240, 3))
    first = b"".join(p._data for p in frames[0])
    assert vp8_keyframe_size(first) == (320, 240)
    assert vp8_keyframe_size(b"".join(p._data for p in frames[1])) is None  # a delta frame
    assert vp8_keyframe_size(b"") is None
    assert vp8_keyframe_size(b"\x00" * 9) is None  # too short for a keyframe header
    assert vp8_keyframe_size(b"\x10\x02\x00\x00\x00\x00\x40\x01\xf0\x00") is None  # no start code


async def test_a_vga_stream_is_decoded_in_the_loop_in_order() -> None:
    got: list[av.VideoFrame] = []
    path = VideoReceiver(_Receiver(), sink=got.append)
    plis = [path.add(p)[0] for p in _stream(640, 480, 11)]
    # aiortc's jitter buffer hands a frame on once the next one starts: 10 of 11
    assert path.decoded_inline == 10 and path.decoded_offloaded == 0 and not path.offloading
    assert _indices(got) == list(range(10))  # timestamps from 0, in order
    assert {(f.width, f.height) for f in got} == {(640, 480)}
    assert not any(plis) and path.failed == 0 and path.dropped == 0
    assert 0 < path.longest_inline < videoreceiver.INLINE_BUDGET


async def test_a_picture_larger_than_vga_is_decoded_in_the_worker_thread() -> None:
    got: list[av.VideoFrame] = []
    path = VideoReceiver(_Receiver(), sink=got.append)
    try:
        for p in _stream(800, 600, 6):
            path.add(p)
        await _settle(path, 5)
        assert path.decoded_offloaded == 5 and path.decoded_inline == 0 and path.offloading
        assert _indices(got) == list(range(5))
        assert {(f.width, f.height) for f in got} == {(800, 600)}
    finally:
        path.close()


async def test_a_flood_beyond_the_loop_budget_goes_to_the_worker_and_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer sending frames faster than real time: the loop decodes at most its budget's
    worth, the worker takes the rest in order, and beyond its queue frames are dropped
    until a keyframe, with a keyframe request (PLI) back to the sender."""
    monkeypatch.setattr(videoreceiver, "INLINE_BUDGET", 0.004)  # a few decodes' worth
    got: list[av.VideoFrame] = []
    path = VideoReceiver(_Receiver(), sink=got.append)
    try:
        frames = _frames(_stream(640, 480, 41, keyframes=(30,)))
        started, plis = time.thread_time(), 0
        for frame in frames[:30]:  # all at once: a burst of 30 frames
            plis += sum(path.add(p)[0] for p in frame)
        in_loop = time.thread_time() - started
        assert 1 <= path.decoded_inline < 29 and path.offloading
        # the loop's decoding stayed within the budget (plus the one decode that crossed it)
        assert in_loop < 0.004 + 2 * path.longest_inline + 0.05
        assert path.dropped >= 1 and plis >= 1  # the worker's queue overflowed: ask a keyframe
        await _settle(path, 29 - path.dropped)
        for k, frame in enumerate(frames[30:], 30):  # then the keyframe asked for, and the rest
            for p in frame:  # in real time: the worker keeps up
                path.add(p)
            deadline = time.monotonic() + 10
            while path.decoded + path.dropped < k:
                assert time.monotonic() < deadline, "the worker did not catch up in 10 s"
                await asyncio.sleep(0.005)
        indices = _indices(got)
        assert indices == sorted(indices) and len(indices) == 40 - path.dropped
        assert indices[-10:] == list(range(30, 40))  # decoding resumed at the keyframe
        assert path.failed == 0  # no delta frame was decoded without its references
    finally:
        path.close()


async def test_garbage_fails_to_decode_asks_a_keyframe_and_the_stream_goes_on() -> None:
    got: list[av.VideoFrame] = []
    path = VideoReceiver(_Receiver(), sink=got.append)
    packets = _stream(320, 240, 8)
    for p in packets[:3]:
        path.add(p)
    decoded = path.decoded
    seq = packets[2].sequence_number
    bogus = RtpPacket(payload_type=PT, sequence_number=seq + 1, timestamp=99)
    bogus._data = b"\xff" * 400  # type: ignore[attr-defined]
    path.add(bogus)
    for i, p in enumerate(packets[3:]):
        p.sequence_number = seq + 2 + i
    plis = [path.add(p)[0] for p in packets[3:]]
    assert path.failed >= 1 and any(plis)
    assert path.decoded > decoded  # later frames still decode (libvpx conceals what it can)


async def test_without_a_sink_nothing_is_decoded_and_a_later_sink_gets_a_keyframe() -> None:
    path = VideoReceiver(_Receiver())
    frames = _frames(_stream(320, 240, 20, keyframes=(12,)))
    for frame in frames[:6]:
        assert not any(path.add(p)[0] for p in frame)
    assert path.decoded == 0 and path.dropped == 5
    got: list[av.VideoFrame] = []
    path.sink = got.append
    plis = [any(path.add(p)[0] for p in frame) for frame in frames[6:]]
    assert plis[0] and sum(plis) <= 2  # asked at once; again at most every PLI_INTERVAL
    # deltas before the keyframe are dropped (their references were never decoded)
    assert _indices(got) == list(range(12, 19)) and path.failed == 0


async def test_the_receivers_of_one_loop_share_one_decoding_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many video receivers on one loop (a big group call, or a peer per receiver each
    within its own budget) cannot take more of the loop together than LOOP_INLINE_BUDGET:
    once it is spent, every receiver decodes in its worker thread."""
    monkeypatch.setattr(videoreceiver, "INLINE_BUDGET", 1.0)  # each alone: no limit
    monkeypatch.setattr(videoreceiver, "LOOP_INLINE_BUDGET", 0.004)
    monkeypatch.setattr(videoreceiver, "_loop_budgets", type(videoreceiver._loop_budgets)())
    stream = _stream(640, 480, 11)
    paths = [VideoReceiver(_Receiver(), sink=lambda f: None) for _ in range(4)]
    try:
        started = time.thread_time()
        for path in paths:
            for p in stream:
                path.add(p)
        in_loop = time.thread_time() - started
        inline = sum(path.decoded_inline for path in paths)
        assert 1 <= inline < 20, inline  # 40 frames; a few decodes' worth in the loop
        assert sum(path.offloading for path in paths) >= 2
        longest = max(path.longest_inline for path in paths)
        assert in_loop < 0.004 + 2 * longest + 0.05
        deadline = time.monotonic() + 10  # the workers finish (a burst over their queue of
        while sum(path.decoded + path.dropped for path in paths) < 40:  # 8 drops frames)
            assert time.monotonic() < deadline, [path.decoded for path in paths]
            await asyncio.sleep(0.01)
        assert sum(path.failed for path in paths) == 0
    finally:
        for path in paths:
            path.close()
