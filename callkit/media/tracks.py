"""aiortc glue: fan-out of local sources to peer connections, consumers of remote tracks.

Local side: one :class:`LocalAudio` / :class:`LocalVideo` per engine reads its source on a
real-time schedule (one pump task) and pushes each frame to every subscriber track, one per
``RTCPeerConnection`` of the full mesh. Sources can be switched, the microphone muted and the
camera disabled at any time.

Remote side: every remote track must be read, or aiortc queues its frames without bound;
:class:`RemoteAudio` and :class:`RemoteVideo` consume one track each, meter the audio and
count the video.

Nothing here blocks the event loop: per-frame work is a few numpy operations.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from .sources import AudioSource, VideoSource
from .volume import FrameLevel, LevelMeter, dbov_from_sums, install_audio_level_hook

__all__ = [
    "VIDEO_CLOCK_RATE",
    "AudioChunk",
    "LocalAudio",
    "LocalVideo",
    "RemoteAudio",
    "RemoteVideo",
]

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
"""RTP clock rate of video; LocalVideo frames carry pts in this clock."""
_VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

QUEUE_SIZE = 10
"""Frames a subscriber queue holds before the oldest is dropped."""
MAX_CATCH_UP = 3
"""Frames the pump may produce back-to-back after a stall before it skips ahead."""
_IDLE_VIDEO_PERIOD = 0.1  # pump tick while there is no video source


async def _next_tick(
    loop: asyncio.AbstractEventLoop, next_t: float, period: float
) -> tuple[float, int]:
    """Sleep until ``next_t``; return ``(tick time, periods skipped)``. After a stall of more
    than ``MAX_CATCH_UP`` periods the tick moves ahead (at most that many frames are produced
    back-to-back to catch up; the rest is skipped)."""
    delay = next_t - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    elif -delay > MAX_CATCH_UP * period:
        skipped = int(-delay // period)
        return next_t + skipped * period, skipped
    return next_t, 0


class _SubscriberTrack(MediaStreamTrack):
    """One peer connection's view of a local source: a bounded queue fed by the pump, or a
    sink it pushes into directly (:meth:`attach_sink`: no queue, no frame object).

    ``max_backlog`` bounds the latency a slow start of the consumer can leave behind: when
    ``recv`` finds more queued frames than that, it drops the oldest, so a queue that filled
    up before the sender started does not become a permanent delay.
    """

    def __init__(self, owner: _Fanout, kind: str, max_backlog: int) -> None:
        super().__init__()
        self.kind = kind
        self._owner: _Fanout | None = owner
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self._max_backlog = max_backlog
        self._sink: Callable[[Any], None] | None = None
        self._on_end: Callable[[], None] | None = None
        self.dropped = 0

    @property
    def push_format(self) -> tuple[int, int] | None:
        """``(sample rate, samples per frame)`` of the :class:`AudioChunk` s this track can
        push to a sink; None if it cannot (video, or ended)."""
        owner = self._owner
        return owner._push_format() if owner is not None else None

    def attach_sink(
        self, sink: Callable[[Any], None], on_end: Callable[[], None]
    ) -> Callable[[], None] | None:
        """From the next tick, call ``sink(chunk)`` with each :class:`AudioChunk` instead of
        queueing a frame (``on_end()`` when the track ends). Returns the function that
        detaches the sink, or None if this track cannot push (see :attr:`push_format`)."""
        owner = self._owner
        if owner is None or owner._push_format() is None or self.readyState != "live":
            return None
        while not self._queue.empty():  # frames queued before the sink: too late for it
            self._queue.get_nowait()
        self._sink, self._on_end = sink, on_end
        owner._ensure_pump()

        def detach() -> None:
            if self._sink is sink:
                self._sink = self._on_end = None

        return detach

    def _put(self, item: Any) -> None:
        sink = self._sink
        if sink is not None:
            try:
                sink(item)
            except Exception:  # one consumer must not stop the fan-out to the others
                log.exception("%s sink failed", self.kind)
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    def _end(self) -> None:
        """Mark ended and wake a pending ``recv`` or the sink's owner (called by the owner)."""
        self._owner = None
        on_end, self._sink, self._on_end = self._on_end, None, None
        if self.readyState == "live":
            super().stop()
            self._put(None)
        if on_end is not None:
            on_end()

    async def recv(self) -> Any:
        """Next frame; raises ``MediaStreamError`` once the track or its owner stopped."""
        if self.readyState != "live":
            raise MediaStreamError
        owner = self._owner
        if owner is not None:
            owner._ensure_pump()
        while self._queue.qsize() > self._max_backlog:
            if self._queue.get_nowait() is None:
                raise MediaStreamError
            self.dropped += 1
        item = await self._queue.get()
        if item is None:
            raise MediaStreamError
        if type(item) is AudioChunk:
            return item.to_frame()
        return item

    def stop(self) -> None:
        """Stop this track and unsubscribe it from its source."""
        owner = self._owner
        if owner is not None:
            owner.unsubscribe(self)
        self._end()


class _Fanout:
    """Subscriber bookkeeping and the lifetime of the pump task (shared by audio and video)."""

    _kind = "unknown"
    _max_backlog = 3

    def __init__(self) -> None:
        self._subscribers: list[_SubscriberTrack] = []
        self._paused: set[_SubscriberTrack] = set()
        self._explicit = False
        self._task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    # -- subscribers ---------------------------------------------------------------------
    def subscribe(self) -> MediaStreamTrack:
        """A new track for one peer connection; starts the pump if a loop is running."""
        track = _SubscriberTrack(self, self._kind, self._max_backlog)
        self._subscribers.append(track)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # the pump starts on the track's first recv()
        else:
            self._ensure_pump()
        return track

    def unsubscribe(self, track: MediaStreamTrack) -> None:
        """End ``track`` and stop feeding it; unknown tracks are ignored."""
        self._paused.discard(track)  # type: ignore[arg-type]
        if track in self._subscribers:
            self._subscribers.remove(track)  # type: ignore[arg-type]
            assert isinstance(track, _SubscriberTrack)
            track._end()
        if not self._subscribers and not self._explicit:
            self._stop_pump()

    def pause(self, track: MediaStreamTrack, paused: bool = True) -> None:
        """Stop (or resume) feeding one subscriber without ending it.

        Ending a track would end aiortc's sender loop for good; a paused track simply has
        no frames, so its sender sends nothing until it is resumed.
        """
        if paused and track in self._subscribers:
            self._paused.add(track)  # type: ignore[arg-type]
        else:
            self._paused.discard(track)  # type: ignore[arg-type]

    @property
    def subscriber_count(self) -> int:
        """Number of live subscriber tracks."""
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        """Whether the pump task is running."""
        return self._task is not None and not self._task.done()

    # -- pump lifetime -------------------------------------------------------------------
    def start(self) -> None:
        """Run the pump even without subscribers (e.g. to meter the local source)."""
        self._explicit = True
        self._ensure_pump()

    async def stop(self) -> None:
        """Stop the pump and end every subscriber track; the object may be started again."""
        self._explicit = False
        subs, self._subscribers = self._subscribers, []
        self._paused.clear()
        for track in subs:
            track._end()
        self._stop_pump()
        if self._retired:
            await asyncio.gather(*list(self._retired), return_exceptions=True)

    def _ensure_pump(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())

    def _stop_pump(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _push(self, make: Callable[[int], Any]) -> None:
        """Queue ``make(i)`` on the i-th subscriber."""
        live = [t for t in self._subscribers if t not in self._paused]
        for i, track in enumerate(live):
            track._put(make(i))

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:  # ends by cancellation
            period = self._period()
            next_t, skipped = await _next_tick(loop, next_t, period)
            if skipped:
                self._skip(skipped)
            try:
                pending = self._tick(next_t)
                if pending is not None:
                    await pending
            except Exception:  # a bad source must not kill the pump
                log.exception("%s pump: frame production failed", self._kind)
            next_t += period

    # -- subclass hooks ------------------------------------------------------------------
    def _period(self) -> float:
        raise NotImplementedError

    def _tick(self, deadline: float) -> Awaitable[None] | None:
        """Produce and push one frame; may return an awaitable to finish off the loop."""
        raise NotImplementedError

    def _skip(self, frames: int) -> None:
        """Account for ``frames`` periods skipped after a stall."""

    def _push_format(self) -> tuple[int, int] | None:
        """``(sample rate, samples per frame)`` of the chunks a sink would get; None: no
        sinks (subscribers read frames)."""
        return None


class AudioChunk:
    """One tick of a :class:`LocalAudio`: what every subscriber gets, read-only.

    ``samples``: mono int16, shape ``(n,)``; ``pts``: the first sample's index at
    ``sample_rate`` (continuous, skipped ticks included); ``level``: its RFC 6464 level
    (0 loudest .. 127 silence). A sink encodes ``samples`` directly; a subscriber that reads
    frames gets :meth:`to_frame`.
    """

    __slots__ = ("channels", "level", "pts", "sample_rate", "samples")

    def __init__(
        self, samples: np.ndarray, pts: int, sample_rate: int, level: int, channels: int = 2
    ) -> None:
        self.samples = samples
        self.pts = pts
        self.sample_rate = sample_rate
        self.level = level
        #: channels of the frame :meth:`to_frame` makes (the mono signal in each)
        self.channels = channels

    def to_frame(self) -> av.AudioFrame:
        """A new ``av.AudioFrame`` (s16, packed, pts in 1/sample_rate, ``opaque`` = its
        :class:`~media.volume.FrameLevel`), for aiortc's encoders."""
        n = self.samples.shape[0]
        if self.channels == 1:
            data = self.samples.reshape(1, n)
        else:  # packed: L R L R ...
            data = np.repeat(self.samples, self.channels).reshape(1, n * self.channels)
        frame = av.AudioFrame.from_ndarray(
            data, format="s16", layout="mono" if self.channels == 1 else "stereo"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        frame.opaque = FrameLevel(self.level)
        return frame


class _AudioClock:
    """One timer per event loop (and frame duration) for every running :class:`LocalAudio`.

    Each engine's audio pump used to be a task of its own waking every 20 ms; with many
    engines in one process those wake-ups were a visible share of the event loop. The clock
    wakes once per period and produces every member's frame in turn (a member joins at the
    next tick); after a stall it lets each member skip what it cannot catch up, as the pump did.
    """

    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _AudioClock]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self._loop = loop
        self._period = period
        self._members: dict[LocalAudio, None] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, period: float) -> _AudioClock:
        """The running loop's clock for ``period``."""
        loop = asyncio.get_running_loop()
        clocks = cls._clocks.setdefault(loop, {})
        clock = clocks.get(period)
        if clock is None:
            clock = clocks[period] = cls(loop, period)
        return clock

    def add(self, member: LocalAudio) -> None:
        self._members[member] = None
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run())

    def discard(self, member: LocalAudio) -> None:
        self._members.pop(member, None)
        if not self._members and self._task is not None:
            self._task.cancel()
            self._task = None

    def __contains__(self, member: object) -> bool:
        return member in self._members

    async def _run(self) -> None:
        loop, period = self._loop, self._period
        next_t = loop.time()
        while self._members:  # also ends by cancellation when the last member leaves
            next_t, skipped = await _next_tick(loop, next_t, period)
            if skipped:
                for member in list(self._members):
                    member._skip(skipped)
            for member in list(self._members):
                try:
                    member._tick(next_t)
                except Exception:  # a bad source must not stop the others
                    log.exception("audio pump: frame production failed")
            next_t += period


class _AudioConverter:
    """Reads a source and returns mono int16 at the output rate, exactly ``n`` per call.

    Channels are averaged with numpy; a different rate goes through ``av.AudioResampler``
    (libswresample) with a small FIFO absorbing its delay.
    """

    def __init__(self, source: AudioSource, out_rate: int) -> None:
        self.source = source
        self.out_rate = out_rate
        self.in_rate = int(source.sample_rate)
        self._resampler = (
            None
            if self.in_rate == out_rate
            else av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        )
        self._fifo = np.zeros(0, dtype=np.int16)

    def _read_mono(self, n: int) -> np.ndarray:
        x = self.source.read(n)
        if type(x) is np.ndarray and x.dtype == np.int16 and x.shape == (n, 1):
            return x.reshape(n)  # the usual mono int16 source: nothing to convert
        x = np.asarray(x)
        if x.dtype.kind == "f":
            x = np.clip(np.rint(x * 32767.0), -32768, 32767)
        if x.ndim == 2 and x.shape[1] > 1:
            x = np.rint(x.mean(axis=1, dtype=np.float64))
        x = x.reshape(-1).astype(np.int16, copy=False)
        if x.size < n:
            x = np.concatenate([x, np.zeros(n - x.size, dtype=np.int16)])
        return x[:n]

    def read(self, n: int) -> np.ndarray:
        if self._resampler is None:
            return self._read_mono(n)
        chunks = [self._fifo]
        have = self._fifo.size
        for _ in range(8):  # the resampler's delay is a few ms; this always suffices
            if have >= n:
                break
            m = math.ceil((n - have) * self.in_rate / self.out_rate) + 1
            frame = av.AudioFrame.from_ndarray(
                self._read_mono(m).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = self.in_rate
            for out in self._resampler.resample(frame):
                data: np.ndarray = out.to_ndarray().reshape(-1)
                chunks.append(data)
                have += data.size
        buf = np.concatenate(chunks)
        if buf.size < n:
            buf = np.concatenate([buf, np.zeros(n - buf.size, dtype=np.int16)])
        self._fifo = buf[n:]
        return buf[:n]


class LocalAudio(_Fanout):
    """The local microphone/source, paced in real time and fanned out to peer connections.

    Every ``frame_ms`` the loop's audio clock reads one frame from the source (converted to
    mono s16 at ``sample_rate``), feeds the volume meter and hands one :class:`AudioChunk`
    (the samples, pts = sample count, the RFC 6464 level) to every subscriber: a subscriber
    whose sender pushes (:meth:`_SubscriberTrack.attach_sink`, callkit's own senders) encodes
    it directly, one that reads its track (a raw aiortc sender) gets an ``av.AudioFrame``
    (format s16, time_base 1/sample_rate) made from it. Muted -> digital silence is sent and
    the local volume is 0. With no source, silence is sent.

    Frames read from a track are packed *stereo* by default (``channels=2``, the mono signal
    in both channels): aiortc's Opus encoder always encodes stereo and upmixes mono input
    with libswresample, which attenuates it by 3 dB, so mono frames would arrive 3 dB quieter
    than sent. ``channels=1`` makes mono frames anyway.

    The pump runs while there is at least one subscriber, or after :meth:`start` until
    :meth:`stop`. Subscriber tracks end (``recv`` raises ``MediaStreamError``) on
    :meth:`unsubscribe`, their own ``stop()`` or :meth:`stop`. The caller owns the sources:
    switching or stopping never closes one.
    """

    _kind = "audio"
    _max_backlog = 3  # at most 60 ms of queued audio when the consumer (re)starts

    def __init__(
        self,
        source: AudioSource | None = None,
        *,
        frame_ms: int = 20,
        sample_rate: int = 48000,
        channels: int = 2,
    ) -> None:
        super().__init__()
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or not 10 <= frame_ms <= 120:
            raise ValueError(f"frame_ms must be an int in [10, 120], got {frame_ms!r}")
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, int)
            or not 8000 <= sample_rate <= 192000
        ):
            raise ValueError(f"sample_rate must be an int in [8000, 192000], got {sample_rate!r}")
        if sample_rate * frame_ms % 1000:
            raise ValueError(
                f"frame_ms={frame_ms} is not a whole number of samples at {sample_rate!r} Hz"
            )
        self.frame_ms = frame_ms
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.samples_per_frame = self.sample_rate * frame_ms // 1000
        self._meter = LevelMeter()
        self._clock: _AudioClock | None = None
        self._muted = False
        self._pts = 0
        self._source: AudioSource | None = None
        self._converter: _AudioConverter | None = None
        self._silence = np.zeros(self.samples_per_frame, dtype=np.int16)
        self._silence.flags.writeable = False
        self.frames_sent = 0
        self.frames_skipped = 0
        self.last_level_dbov = 127
        """RFC 6464 level (0 loudest .. 127 silence) of the last frame sent; each chunk carries
        it for the RTP audio-level header (frames made for aiortc's senders as ``opaque``, a
        :class:`~media.volume.FrameLevel`), so the samples are not read again."""
        install_audio_level_hook()
        self.set_source(source)

    @property
    def source(self) -> AudioSource | None:
        """The current source (None -> silence)."""
        return self._source

    def set_source(self, source: AudioSource | None) -> None:
        """Switch the source at any time; the next frame comes from it. None -> silence."""
        if source is not None and not isinstance(source, AudioSource):
            raise TypeError(f"expected an AudioSource or None, got {type(source).__name__}")
        self._source = source
        self._converter = None if source is None else _AudioConverter(source, self.sample_rate)

    @property
    def muted(self) -> bool:
        """Muted sends digital silence (the source keeps being read in real time)."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = bool(value)

    def take_volume(self) -> int:
        """Volume (0..100) of what was sent since the last take; muted or idle -> 0."""
        return self._meter.take_volume()

    def _period(self) -> float:
        return self.frame_ms / 1000.0

    # the pump is the loop's shared audio clock, not a task of its own
    def _ensure_pump(self) -> None:
        if self._clock is None:
            self._clock = _AudioClock.of(self._period())
        self._clock.add(self)

    def _stop_pump(self) -> None:
        if self._clock is not None:
            self._clock.discard(self)
            self._clock = None

    @property
    def running(self) -> bool:
        """Whether frames are being produced (this source is on the loop's audio clock)."""
        return self._clock is not None and self in self._clock

    def _skip(self, frames: int) -> None:
        self.frames_skipped += frames
        self._pts += frames * self.samples_per_frame

    def _push_format(self) -> tuple[int, int] | None:
        return self.sample_rate, self.samples_per_frame

    def _tick(self, deadline: float) -> None:
        n = self.samples_per_frame
        samples: np.ndarray | None = None
        if self._converter is not None:
            try:  # a copy: the chunk may be read after the source reused its buffer
                samples = np.array(self._converter.read(n), dtype=np.int16)
            except Exception:
                log.exception("audio source %r failed; sending silence", self._source)
                self.set_source(None)
        if self._muted or samples is None:
            samples = self._silence
            self._meter.add_silence(n)
            level = 127
        else:  # one pass over the samples for both the local volume and the RTP header
            as_float = samples.astype(np.float64)  # exact: 5760 * 2**30 < 2**53
            sum_sq = int(as_float @ as_float)
            self._meter.add_sum_squares(sum_sq, n)
            level = dbov_from_sums(sum_sq, n)
        self.last_level_dbov = level
        if self._subscribers:
            chunk = AudioChunk(samples, self._pts, self.sample_rate, level, self.channels)
            self._push(lambda _: chunk)
        self._pts += n
        self.frames_sent += 1


class LocalVideo(_Fanout):
    """The local camera/source, paced at the source's fps and fanned out to peer connections.

    Frames carry pts in the 90 kHz clock, derived from the pump's schedule (so gaps while
    disabled show as time gaps). Disabled, or with no source, nothing is read or sent: a
    closed camera sends no video. ``frames_sent`` counts frames produced.

    Frames that are not yuv420p (the encoders' format) are converted once, in a worker
    thread, instead of once per peer connection by aiortc. Each subscriber gets its own
    ``av.VideoFrame`` object (plane copies after the first), because aiortc's encoders
    write ``frame.pict_type`` from their worker threads to force keyframes.
    """

    _kind = "video"
    _max_backlog = 1  # video: only the newest frame or two matter

    def __init__(self, source: VideoSource | None = None, *, enabled: bool = True) -> None:
        super().__init__()
        self._source: VideoSource | None = None
        self._enabled = bool(enabled)
        self._t0: float | None = None
        self._reformatter: VideoReformatter | None = None
        self.frames_sent = 0
        self.set_source(source)

    @property
    def source(self) -> VideoSource | None:
        """The current source (None -> no frames)."""
        return self._source

    def set_source(self, source: VideoSource | None) -> None:
        """Switch the source at any time (None -> no frames); the pace follows its fps."""
        if source is not None and not isinstance(source, VideoSource):
            raise TypeError(f"expected a VideoSource or None, got {type(source).__name__}")
        self._source = source

    @property
    def enabled(self) -> bool:
        """False -> no frames are read or pushed at all."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    def _ensure_pump(self) -> None:
        if not self.running:
            # a fresh converter per pump run: a cancelled run's worker may still hold the old
            self._reformatter = None
        super()._ensure_pump()

    def _period(self) -> float:
        src = self._source
        return 1.0 / src.fps if src is not None else _IDLE_VIDEO_PERIOD

    def _tick(self, deadline: float) -> Awaitable[None] | None:
        if self._t0 is None:
            self._t0 = deadline
        src = self._source
        if not self._enabled or src is None:
            return None
        try:
            frame = src.read()
        except Exception:
            log.exception("video source %r failed; sending no video", src)
            self._source = None
            return None
        if frame.format.name != "yuv420p":
            return self._convert_and_send(frame, deadline)
        self._send(frame, deadline)
        return None

    async def _convert_and_send(self, frame: av.VideoFrame, deadline: float) -> None:
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        convert = functools.partial(self._reformatter.reformat, frame, format="yuv420p")
        self._send(await asyncio.get_running_loop().run_in_executor(None, convert), deadline)

    def _send(self, frame: av.VideoFrame, deadline: float) -> None:
        assert self._t0 is not None
        frame.pts = round((deadline - self._t0) * VIDEO_CLOCK_RATE)
        frame.time_base = _VIDEO_TIME_BASE
        self._push(lambda i: frame if i == 0 else _copy_video_frame(frame))
        self.frames_sent += 1


def _copy_video_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """A new frame object with copies of ``frame``'s planes, pts and time base."""
    out = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for src, dst in zip(frame.planes, out.planes, strict=True):
        n = min(src.line_size, dst.line_size)
        rows = min(src.height, dst.height)
        d = np.frombuffer(memoryview(dst), dtype=np.uint8).reshape(-1, dst.line_size)
        s = np.frombuffer(memoryview(src), dtype=np.uint8).reshape(-1, src.line_size)
        d[:rows, :n] = s[:rows, :n]
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


def _audio_to_int16(frame: av.AudioFrame) -> np.ndarray:
    """Samples of a decoded frame as int16 of shape (samples, channels)."""
    arr: np.ndarray[Any, Any] = frame.to_ndarray()
    channels = len(frame.layout.channels) or 1
    # planar (channels, n) -> (n, channels)
    arr = arr.T if frame.format.is_planar else arr.reshape(-1, channels)
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f":
        arr = np.clip(np.rint(arr * 32767.0), -32768, 32767).astype(np.int16)
    elif kind == "i" and size == 4:
        arr = (arr >> 16).astype(np.int16)
    elif kind == "u" and size == 1:
        arr = ((arr.astype(np.int16) - 128) << 8).astype(np.int16)
    elif arr.dtype != np.int16:
        arr = arr.astype(np.int16)
    return np.ascontiguousarray(arr)


class _RemoteConsumer:
    """Reads one remote track in a task until it ends or :meth:`stop`."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames_received = 0
        self.last_frame_at: float | None = None
        """``loop.time()`` of the last frame, None before the first."""
        self.ended = False
        """True once the track ended (the remote side or the connection stopped it)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start consuming (idempotent); needs a running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop consuming and wait for the task; idempotent. Does not stop the track."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                self.ended = True
                return
            except Exception:  # e.g. a decoder error surfacing through recv()
                log.exception("%s consumer: recv failed; stopping", self.track.kind)
                self.ended = True
                return
            self._count(loop.time())
            try:
                self._handle(frame)
            except Exception:
                log.exception("%s consumer: frame handling failed", self.track.kind)

    def _count(self, now: float) -> None:
        self.frames_received += 1
        self.last_frame_at = now

    def _handle(self, frame: Any) -> None:
        raise NotImplementedError


class RemoteAudio(_RemoteConsumer):
    """Consumes a remote audio track: meters every decoded sample, optional frame hook.

    ``on_frame(samples, sample_rate)`` gets int16 ``(n, channels)`` arrays (aiortc decodes
    Opus to 48 kHz stereo); it runs on the event loop and must be quick. Hook exceptions are
    logged, never raised.
    """

    def __init__(
        self, track: MediaStreamTrack, *, on_frame: Callable[[np.ndarray, int], None] | None = None
    ) -> None:
        super().__init__(track)
        self.on_frame = on_frame
        self.sample_rate: int | None = None
        self.channels: int | None = None
        self.frames_concealed = 0
        """Frames that stand for lost packets (concealed or recovered by in-band FEC)."""
        self._meter = LevelMeter()

    def take_volume(self) -> int:
        """Volume (0..100) of the audio received since the last take; nothing -> 0."""
        return self._meter.take_volume()

    def take_dbfs(self) -> float:
        """dBFS of the audio received since the last take (-inf if none or silent)."""
        return self._meter.take_dbfs()

    def feed(self, samples: np.ndarray, sample_rate: int, concealed: bool = False) -> None:
        """Take one decoded frame pushed by the receive path (int16 ``(n, channels)``, kept
        as is), ``concealed`` if it stands for a lost packet; the track's own frames are not
        needed then. Hook exceptions are logged, never raised."""
        self.frames_received += 1
        self.last_frame_at = time.monotonic()  # what asyncio's loop.time() reads, one call less
        if concealed:
            self.frames_concealed += 1
        try:
            self._take(samples, sample_rate)
        except Exception:
            log.exception("audio consumer: frame handling failed")

    def _handle(self, frame: av.AudioFrame) -> None:
        self._take(_audio_to_int16(frame), frame.sample_rate)

    def _take(self, samples: np.ndarray, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.channels = samples.shape[1]
        self._meter.add(samples)
        if self.on_frame is not None:
            self.on_frame(samples, sample_rate)


class RemoteVideo(_RemoteConsumer):
    """Consumes a remote video track: counts frames, records size; optional frame hook.

    ``on_frame(frame)`` gets each decoded ``av.VideoFrame`` on the event loop; it must be
    quick. Hook exceptions are logged, never raised.
    """

    def __init__(
        self, track: MediaStreamTrack, *, on_frame: Callable[[av.VideoFrame], None] | None = None
    ) -> None:
        super().__init__(track)
        self.on_frame = on_frame
        self.last_size: tuple[int, int] | None = None
        """(width, height) of the last frame, None before the first."""

    def feed(self, frame: av.VideoFrame) -> None:
        """Take one decoded frame pushed by the receive path (callkit's
        :class:`~callkit.media.videoreceiver.VideoReceiver`); the track's own frames are not
        needed then. Hook exceptions are logged, never raised."""
        self._count(asyncio.get_running_loop().time())
        try:
            self._handle(frame)
        except Exception:
            log.exception("video consumer: frame handling failed")

    def _handle(self, frame: av.VideoFrame) -> None:
        self.last_size = (frame.width, frame.height)
        if self.on_frame is not None:
            self.on_frame(frame)
