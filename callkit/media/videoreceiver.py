"""The receive path of one remote video track: reassemble, decode in the loop (bounded), deliver.

aiortc's video receiver (1.16) starts a decoder thread per receiver and hands every frame
across threads twice: the reassembled frame goes to the thread on a ``queue.Queue``, the
decoded ``VideoFrame`` comes back with ``run_coroutine_threadsafe`` onto the track's
``asyncio.Queue``, where a consumer task awaits ``recv()``. On a loaded core those hand-offs
(two thread wake-ups, a coroutine, a future and a task wake-up per frame) cost about half as
much as the VP8 decode itself (docs/performance.md).

:class:`VideoReceiver` takes the place of the receiver's jitter buffer
(:func:`callkit.media._compat.use_video_receiver`): it reassembles frames with aiortc's own
video jitter buffer, maps their timestamps as aiortc does and decodes them with aiortc's own
decoders (same libraries, same frames), then calls ``sink(frame)``. A frame is decoded right
there in the event loop when that is known to be short and cheap:

- the stream is VP8 no larger than :data:`INLINE_MAX_PIXELS` (read from the last keyframe's
  header), and
- this receiver has not spent more than :data:`INLINE_BUDGET` s of loop time on decoding in
  the last second, nor all the loop's receivers together more than :data:`LOOP_INLINE_BUDGET`
  s (token buckets refilled at those rates; each decode's CPU time is taken), so many video
  receivers on one loop cannot take more of it than one or two do.

Anything else (another codec, a larger picture, a peer sending more than the budget buys)
goes to a worker thread of this receiver's own, started on first need, in order: while the
worker has frames, later frames queue behind them. The worker's queue holds at most
:data:`OFFLOAD_QUEUE` frames; beyond that, frames are dropped until the next keyframe and a
keyframe is asked for (PLI), as after a decoding error. So a hostile or oversized stream costs
one thread and a bounded queue, never the loop's time.

With no sink, nothing is decoded; a sink set later gets a keyframe: the next packet asks the
sender for one (PLI) and frames are dropped until it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import av

from . import _compat

__all__ = [
    "INLINE_BUDGET",
    "INLINE_MAX_PIXELS",
    "LOOP_INLINE_BUDGET",
    "OFFLOAD_QUEUE",
    "PLI_INTERVAL",
    "VideoReceiver",
    "VideoSink",
    "vp8_keyframe_size",
]

log = logging.getLogger(__name__)

#: largest picture (width * height) decoded in the event loop; larger ones go to the worker
INLINE_MAX_PIXELS = 640 * 480
#: loop time (s) one receiver may spend decoding per second, and at once (a token bucket)
INLINE_BUDGET = 0.05
#: loop time (s) all the video receivers of one event loop may spend decoding per second
LOOP_INLINE_BUDGET = 0.1
#: frames the worker thread may have waiting; more are dropped until the next keyframe
OFFLOAD_QUEUE = 8
#: shortest time (s) between two keyframe requests (PLI) while waiting for a keyframe
PLI_INTERVAL = 0.5

#: ``sink(frame)``: each decoded ``av.VideoFrame`` (pts in the 90 kHz clock), in the loop
VideoSink = Callable[[av.VideoFrame], None]


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` if ``data`` (a depayloaded VP8 frame) is a keyframe, else None
    (RFC 6386 section 9.1: a 3-byte frame tag, bit 0 clear on keyframes, then the start code
    9d 01 2a and two 14-bit sizes)."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return (data[6] | data[7] << 8) & 0x3FFF, (data[8] | data[9] << 8) & 0x3FFF


class _Worker:
    """A thread that decodes, in order, the frames the loop may not decode itself."""

    def __init__(self, owner: VideoReceiver, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self.pending = 0  # frames submitted and not yet delivered back (loop side only)
        self._thread = threading.Thread(target=self._run, name="callkit-video-decode", daemon=True)
        self._thread.start()

    def submit(self, codec: Any, frame: Any) -> None:
        self.pending += 1
        self._queue.put((codec, frame))

    def stop(self) -> None:
        """End the thread after the frame it decodes now (no wait)."""
        self._queue.put(None)

    def _run(self) -> None:
        owner, loop = self._owner, self._loop
        while True:
            task = self._queue.get()
            if task is None:
                return
            frames, failed = owner._decode(*task)
            try:
                loop.call_soon_threadsafe(owner._delivered, frames, failed)
            except RuntimeError:  # the loop closed
                return


class _TokenBucket:
    """Seconds of decoding allowed: refilled at ``rate`` per second, holding at most ``rate``."""

    __slots__ = ("at", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = self.tokens = rate
        self.at = time.monotonic()

    def available(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens > 0


_loop_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TokenBucket] = (
    weakref.WeakKeyDictionary()
)


def _loop_budget() -> _TokenBucket:
    """The running loop's shared decoding budget (see :data:`LOOP_INLINE_BUDGET`)."""
    loop = asyncio.get_running_loop()
    bucket = _loop_budgets.get(loop)
    if bucket is None:
        bucket = _loop_budgets[loop] = _TokenBucket(LOOP_INLINE_BUDGET)
    return bucket


class VideoReceiver:
    """aiortc's video jitter buffer, then a decoder run in the loop when cheap, else in a
    worker thread; decoded frames go to :attr:`sink`.

    Has aiortc's jitter-buffer interface (``add(packet) -> (pli, frame)``, ``capacity``) and
    never returns a frame, so aiortc's own decoder thread stays idle.
    """

    def __init__(self, receiver: Any, sink: VideoSink | None = None) -> None:
        self._receiver = receiver
        self.jitter = _compat.video_jitter_buffer()
        self._timestamps = _compat.timestamp_mapper()
        self._sink = sink
        self._decoder: Any = None
        self._decoder_name: str | None = None
        self._size: tuple[int, int] | None = None  # from the last VP8 keyframe
        self._worker: _Worker | None = None
        self._budget = _TokenBucket(INLINE_BUDGET)
        self._need_keyframe = False
        self._pli_at: float | None = None
        self._pli_due = False
        self._closed = False
        #: counters, for tests and benchmarks: frames decoded in the loop, in the worker
        #: thread, frames that failed to decode, and frames dropped (no sink, worker queue
        #: full, or waiting for a keyframe)
        self.decoded_inline = 0
        self.decoded_offloaded = 0
        self.failed = 0
        self.dropped = 0
        #: longest single decode in the loop (s of CPU time)
        self.longest_inline = 0.0

    @property
    def capacity(self) -> int:
        """The most packets the jitter buffer keeps (aiortc's buffers expose it)."""
        return int(self.jitter.capacity)

    @property
    def decoded(self) -> int:
        """Frames decoded, in the loop or in the worker thread."""
        return self.decoded_inline + self.decoded_offloaded

    @property
    def offloading(self) -> bool:
        """Whether a worker thread has been started for this receiver."""
        return self._worker is not None

    @property
    def sink(self) -> VideoSink | None:
        """Where decoded frames go; None: nothing is decoded. Setting a sink where there was
        none asks the sender for a keyframe, and frames are dropped until it arrives."""
        return self._sink

    @sink.setter
    def sink(self, sink: VideoSink | None) -> None:
        if sink is not None and self._sink is None:
            self._wait_keyframe()
        self._sink = sink

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's receiver calls this for each video RTP packet (``_data`` set); returns
        whether to send a PLI, and never a frame."""
        pli, frame = self.jitter.add(packet)
        if frame is not None and not self._closed:
            frame.timestamp = self._timestamps.map(frame.timestamp)
            codec = _compat.receiver_codecs(self._receiver).get(packet.payload_type)
            if codec is not None:
                self._take(codec, frame)
        if self._pli_due:
            now = time.monotonic()
            if self._pli_at is None or now - self._pli_at >= PLI_INTERVAL:
                self._pli_at, self._pli_due, pli = now, False, True
        return pli, None

    def _wait_keyframe(self) -> None:
        self._need_keyframe = self._pli_due = True

    def _take(self, codec: Any, frame: Any) -> None:
        vp8 = codec.mimeType.lower() == "video/vp8"
        size = vp8_keyframe_size(frame.data) if vp8 else None
        if size is not None:
            self._size = size
            self._need_keyframe = False
        if self._sink is None:
            self.dropped += 1
            return
        if self._need_keyframe and vp8:
            self.dropped += 1
            self._pli_due = True
            return
        worker = self._worker
        if (worker is None or worker.pending == 0) and self._inline_ok(vp8):
            started = time.thread_time()  # CPU: being preempted is not the decode's cost
            frames, failed = self._decode(codec, frame)
            took = time.thread_time() - started
            self._budget.tokens -= took
            _loop_budget().tokens -= took
            self.longest_inline = max(self.longest_inline, took)
            self._deliver(frames, failed, inline=True)
            return
        if worker is None:
            worker = self._worker = _Worker(self, asyncio.get_running_loop())
        if worker.pending >= OFFLOAD_QUEUE:
            self.dropped += 1
            if vp8:
                self._wait_keyframe()
            return
        worker.submit(codec, frame)

    def _inline_ok(self, vp8: bool) -> bool:
        size = self._size
        if not vp8 or size is None or size[0] * size[1] > INLINE_MAX_PIXELS:
            return False
        now = time.monotonic()
        return self._budget.available(now) & _loop_budget().available(now)

    def _decode(self, codec: Any, frame: Any) -> tuple[list[Any], bool]:
        """Decode one frame (in the loop or the worker, never both at once)."""
        if codec.name != self._decoder_name:
            self._decoder = _compat.video_decoder(codec)
            self._decoder_name = codec.name
        try:
            return list(self._decoder.decode(frame)), False
        except av.FFmpegError as exc:
            log.warning("video receiver: failed to decode a %s frame: %s", codec.name, exc)
            return [], True

    def _delivered(self, frames: list[Any], failed: bool) -> None:
        """The worker's result, back in the loop."""
        if self._worker is not None:
            self._worker.pending -= 1
        self._deliver(frames, failed, inline=False)

    def _deliver(self, frames: list[Any], failed: bool, *, inline: bool) -> None:
        if failed:
            self.failed += 1
            self._pli_due = True  # as aiortc does: report the lost picture (RFC 4585 6.3.1.1)
        sink = self._sink
        for frame in frames:
            if inline:
                self.decoded_inline += 1
            else:
                self.decoded_offloaded += 1
            if sink is None or self._closed:
                continue
            try:
                sink(frame)
            except Exception:  # never into aiortc's RTP handling
                log.exception("video sink failed")

    def close(self) -> None:
        """Stop decoding (idempotent); the worker thread, if any, ends after its frame."""
        self._closed = True
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
