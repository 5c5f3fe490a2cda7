"""Numpy frames out of a call: frame taps and async iterators over remote users' media.

``CallEngine`` inherits :class:`StreamsMixin`::

    async for samples in engine.remote_audio("alice", sample_rate=16000, channels=1):
        ...   # int16 (n, 1) arrays of alice's decoded audio, as they arrive
    async for image in engine.remote_video("alice"):
        ...   # uint8 (height, width, 3) RGB arrays, the newest frames

A stream can be opened before the user joins (e.g. in ``onCallReceived``); it ends (the
``async for`` finishes) when that user leaves, the call ends or is cancelled, the engine is
kicked off, its UserSig expires or it is destroyed; or when you call ``aclose()`` (also via
``async with``). Lower level, :meth:`StreamsMixin.add_audio_tap` calls a function with every
decoded frame of a user, on the event loop, which is how sinks such as
``callkit.media.SpeakerSink`` and ``callkit.media.RecorderSink`` are attached.

The other direction (numpy into a call) is ``callkit.media.PushAudioSource``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import av
import numpy as np

from callkit.media.convert import PcmConverter

__all__ = ["AudioStream", "StreamsMixin", "VideoStream"]

log = logging.getLogger(__name__)

AudioTap = Callable[[np.ndarray, int], None]
VideoTap = Callable[[av.VideoFrame], None]

_ENDING_EVENTS = (
    "onUserLeave",
    "onCallEnd",
    "onCallCancelled",
    "onKickedOffline",
    "onUserSigExpired",
)
_POLL = 0.5  # how often a waiting stream checks that its engine is still there
_BIG_FRAME = 640 * 480  # RGB conversion of larger frames runs in a worker thread

T = TypeVar("T")


class _Stream(Generic[T]):
    """Bounded queue of items fed by an engine tap; async-iterable until it ends."""

    def __init__(self, engine: Any, user_id: str, max_items: int) -> None:
        self.engine = engine
        self.user_id = user_id
        self._items: collections.deque[Any] = collections.deque()
        self._max_items = max(1, max_items)
        self._wake: asyncio.Event = asyncio.Event()
        self._closed = False
        self._armed = False  # saw the engine in a call: going idle afterwards ends the stream
        self.dropped = 0
        """Items dropped because the consumer fell behind (oldest first)."""
        self._listeners = {name: self._on_ending(name) for name in _ENDING_EVENTS}
        for name, fn in self._listeners.items():
            engine.add_event_listener(name, fn)

    @property
    def closed(self) -> bool:
        """True once the stream ended (queued items may still be read)."""
        return self._closed

    def _on_ending(self, name: str) -> Callable[[dict[str, Any]], None]:
        def listener(res: dict[str, Any]) -> None:
            if name != "onUserLeave" or res.get("userId") == self.user_id:
                self._end()

        return listener

    def _push(self, item: Any) -> None:
        if self._closed:
            return
        self._items.append(item)
        while len(self._items) > self._max_items:
            self._items.popleft()
            self.dropped += 1
        self._wake.set()

    def _detach(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._detach()
        for name, fn in self._listeners.items():
            with contextlib.suppress(ValueError):
                self.engine.remove_event_listener(name, fn)
        self._wake.set()

    def _engine_gone(self) -> bool:
        if self.engine.user_id is None:  # destroyed or never logged in
            return True
        idle = self.engine.call_state.value == "idle"
        if not idle:
            self._armed = True
        return idle and self._armed

    async def _next_item(self) -> Any:
        while True:
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), _POLL)
            except asyncio.TimeoutError:
                if self._engine_gone():
                    self._end()

    def __aiter__(self) -> _Stream[T]:
        return self

    async def __anext__(self) -> T:
        item: T = await self._next_item()
        return item

    async def aclose(self) -> None:
        """Stop receiving; whatever is queued is dropped. Idempotent."""
        self._end()
        self._items.clear()

    async def __aenter__(self) -> _Stream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AudioStream(_Stream[np.ndarray]):
    """A remote user's decoded audio as int16 ``(n, channels)`` arrays at ``sample_rate``.

    Frames come as decoded (20 ms each for Opus), converted with libswresample and numpy.
    At most ``max_queue_seconds`` are held for a slow consumer; older frames are dropped.
    """

    def __init__(
        self,
        engine: Any,
        user_id: str,
        sample_rate: int = 48000,
        channels: int = 1,
        max_queue_seconds: float = 1.0,
    ) -> None:
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192000:
            raise ValueError(f"sample_rate must be an int in [8000, 192000], got {sample_rate!r}")
        if not isinstance(channels, int) or not 1 <= channels <= 8:
            raise ValueError(f"channels must be an int in [1, 8], got {channels!r}")
        super().__init__(engine, user_id, max(1, round(max_queue_seconds * 50)))
        self.sample_rate = sample_rate
        self.channels = channels
        self._conv = PcmConverter(sample_rate, channels)
        engine.add_audio_tap(user_id, self._tap)

    def _tap(self, samples: np.ndarray, sample_rate: int) -> None:
        data = self._conv.convert(samples, sample_rate)
        if len(data):
            self._push(data)

    def _detach(self) -> None:
        self.engine.remove_audio_tap(self.user_id, self._tap)


class VideoStream(_Stream[np.ndarray]):
    """A remote user's decoded video as ``uint8`` arrays in ``format`` (``"rgb24"``:
    (height, width, 3); ``"bgr24"`` for OpenCV; ``"gray"``: (height, width)).

    Only the newest ``max_queue`` frames are kept; conversion happens when a frame is taken
    (in a worker thread for frames larger than 640x480).
    """

    def __init__(
        self, engine: Any, user_id: str, format: str = "rgb24", max_queue: int = 2
    ) -> None:
        if format not in ("rgb24", "bgr24", "gray", "yuv420p"):
            raise ValueError(f"format must be rgb24, bgr24, gray or yuv420p, got {format!r}")
        super().__init__(engine, user_id, max_queue)
        self.format = format
        self.last_frame: av.VideoFrame | None = None
        """The ``av.VideoFrame`` behind the last array returned (size, timestamps)."""
        engine.add_video_tap(user_id, self._push)

    def _detach(self) -> None:
        self.engine.remove_video_tap(self.user_id, self._push)

    async def __anext__(self) -> np.ndarray:
        frame: av.VideoFrame = await self._next_item()
        self.last_frame = frame
        if frame.width * frame.height > _BIG_FRAME:
            return await asyncio.to_thread(frame.to_ndarray, format=self.format)
        return frame.to_ndarray(format=self.format)


class StreamsMixin:
    """Bot-facing media methods of ``CallEngine``: frame taps and remote media streams.

    Relies on the engine's ``_audio_taps`` / ``_video_taps`` (``{user_id: [fn]}``, called
    for every decoded remote frame) and its event listeners.
    """

    _audio_taps: dict[str, list[Any]]
    _video_taps: dict[str, list[Any]]

    def add_audio_tap(self, user_id: str, fn: AudioTap) -> None:
        """Call ``fn(samples, sample_rate)`` with every decoded audio frame of ``user_id``
        (int16 ``(n, channels)``, 48 kHz stereo from Opus), on the event loop: keep it quick.
        May be added before the user joins; exceptions are logged, never raised."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        taps = self._audio_taps.setdefault(user_id, [])
        if fn not in taps:
            taps.append(_guarded(fn, user_id, "audio"))

    def remove_audio_tap(self, user_id: str, fn: AudioTap) -> None:
        """Stop calling ``fn`` for ``user_id`` (unknown taps are ignored)."""
        _remove(self._audio_taps, user_id, fn)

    def add_video_tap(self, user_id: str, fn: VideoTap) -> None:
        """Call ``fn(frame)`` with every decoded ``av.VideoFrame`` of ``user_id``, on the event
        loop: keep it quick. Exceptions are logged, never raised."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        taps = self._video_taps.setdefault(user_id, [])
        if fn not in taps:
            taps.append(_guarded(fn, user_id, "video"))

    def remove_video_tap(self, user_id: str, fn: VideoTap) -> None:
        """Stop calling ``fn`` for ``user_id`` (unknown taps are ignored)."""
        _remove(self._video_taps, user_id, fn)

    def remote_audio(
        self,
        user_id: str,
        sample_rate: int = 48000,
        channels: int = 1,
        *,
        max_queue_seconds: float = 1.0,
    ) -> AudioStream:
        """``async for samples in engine.remote_audio(user)``: int16 ``(n, channels)`` arrays
        of ``user_id``'s decoded audio at ``sample_rate``, from now until the user leaves or
        the call ends. See :class:`AudioStream`."""
        return AudioStream(self, user_id, sample_rate, channels, max_queue_seconds)

    def remote_video(
        self, user_id: str, format: str = "rgb24", *, max_queue: int = 2
    ) -> VideoStream:
        """``async for image in engine.remote_video(user)``: ``user_id``'s newest decoded
        frames as RGB ``uint8`` arrays (height, width, 3). See :class:`VideoStream`."""
        return VideoStream(self, user_id, format, max_queue)


class _GuardedTap:
    """Wraps a tap so one that raises is logged and never breaks the media pipeline; compares
    equal to the function it wraps (so removing by the original function works)."""

    __slots__ = ("_failed", "fn", "kind", "user_id")

    def __init__(self, fn: Callable[..., None], user_id: str, kind: str) -> None:
        self.fn, self.user_id, self.kind, self._failed = fn, user_id, kind, False

    def __call__(self, *args: Any) -> None:
        try:
            self.fn(*args)
        except Exception:
            if not self._failed:  # once per tap: a broken tap must not flood the log
                self._failed = True
                log.exception("%s tap %r for %s failed", self.kind, self.fn, self.user_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _GuardedTap):
            return self.fn == other.fn
        return bool(self.fn == other)

    def __hash__(self) -> int:
        return hash(self.fn)


def _guarded(fn: Callable[..., None], user_id: str, kind: str) -> _GuardedTap:
    return fn if isinstance(fn, _GuardedTap) else _GuardedTap(fn, user_id, kind)


def _remove(taps: dict[str, list[Any]], user_id: str, fn: Callable[..., None]) -> None:
    lst = taps.get(user_id)
    if lst is None:
        return
    lst[:] = [t for t in lst if t != fn]
    if not lst:
        del taps[user_id]
