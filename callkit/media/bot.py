"""Media for programs that talk: push numpy audio (and video) into a call.

:class:`PushAudioSource` is an :class:`~media.sources.AudioSource` a program writes int16 (or
float) frames into, at any sample rate and channel count. The engine's pump reads it in real
time (20 ms every 20 ms); it plays what is queued, in order, and silence when nothing is.
``clear()`` drops what is queued (barge-in); ``await wait_for_playout()`` returns once
everything written has been handed to the engine.

:class:`MixSource` sums several sources (e.g. a push source over a background file).
:class:`PushVideoSource` sends the newest image written to it, at its frame rate.

The other direction (numpy frames out of a call) is ``engine.remote_audio(user_id)`` /
``engine.remote_video(user_id)`` in :mod:`callkit.streams`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterable
from typing import Any

import av
import numpy as np

from .convert import PcmConverter, black_frame, fresh_frame, remix
from .sources import AudioSource, VideoSource

__all__ = ["MixSource", "PushAudioSource", "PushVideoSource"]


class PushAudioSource(AudioSource):
    """A queue of PCM that the engine plays in real time; silence when empty.

    ``write(samples, sample_rate)`` takes int16 or float (-1..1) arrays of shape (n,) or
    (n, channels) at any rate and channel count; they are converted (libswresample) to
    ``sample_rate`` x ``channels`` and queued. With ``max_queue_seconds`` the oldest queued
    audio is dropped beyond that (a bound on latency for live relays); by default the queue
    is unbounded (write a whole prompt at once).

    Write and wait on the event loop thread (where the engine reads the source), or call
    ``write`` from another thread only through ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self, sample_rate: int = 48000, channels: int = 1, *, max_queue_seconds: float | None = None
    ) -> None:
        super().__init__(sample_rate, channels)
        if max_queue_seconds is not None and max_queue_seconds <= 0:
            raise ValueError(f"max_queue_seconds must be positive, got {max_queue_seconds!r}")
        self._max_queue = (
            None if max_queue_seconds is None else max(1, round(max_queue_seconds * sample_rate))
        )
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0
        self._conv = PcmConverter(sample_rate, channels)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()
        self.samples_written = 0
        """Samples queued so far (after conversion)."""
        self.samples_played = 0
        """Samples of written audio handed to the engine so far (silence not counted)."""
        self.samples_dropped = 0
        """Samples dropped by ``clear()`` or ``max_queue_seconds``."""
        self.underruns = 0
        """Reads that found some queued audio but not enough (a gap in the middle)."""

    @property
    def queued_seconds(self) -> float:
        """Seconds of audio waiting to be played."""
        return self._queued / self.sample_rate

    def write(self, samples: Any, sample_rate: int | None = None) -> None:
        """Queue ``samples`` recorded at ``sample_rate`` (default: this source's rate)."""
        data = self._conv.convert(samples, self.sample_rate if sample_rate is None else sample_rate)
        if not len(data):
            return
        with self._lock:
            self._chunks.append(data)
            self._queued += len(data)
            self.samples_written += len(data)
            if self._max_queue is not None and self._queued > self._max_queue:
                self._drop_locked(self._queued - self._max_queue)

    def _drop_locked(self, n: int) -> None:
        self.samples_dropped += n
        self._queued -= n
        while n > 0:
            head = self._chunks[0]
            if len(head) <= n:
                self._chunks.popleft()
                n -= len(head)
            else:
                self._chunks[0] = head[n:]
                n = 0

    def clear(self) -> None:
        """Drop everything queued (playback goes silent at the next frame)."""
        with self._lock:
            self.samples_dropped += self._queued
            self._chunks.clear()
            self._queued = 0
        self._wake()

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` queued samples, then silence."""
        n = max(0, int(n))
        out = np.zeros((n, self.channels), dtype=np.int16)
        with self._lock:
            got = 0
            while got < n and self._chunks:
                head = self._chunks[0]
                take = min(n - got, len(head))
                out[got : got + take] = head[:take]
                got += take
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
            self._queued -= got
            self.samples_played += got
            if 0 < got < n:
                self.underruns += 1
            empty = self._queued == 0
        if empty and self._waiters:
            self._wake()
        return out

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    async def wait_for_playout(self, timeout: float | None = None) -> None:
        """Return once everything written so far has been played (handed to the engine).

        Needs something reading the source (an engine in a call, or a started pump);
        raises ``TimeoutError`` after ``timeout`` seconds if given.
        """
        if self._queued == 0:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, fut))
        if self._queued == 0:  # drained meanwhile (another thread read it)
            self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self.queued_seconds:.2f} s still queued after {timeout} s "
                "(is anything reading this source?)"
            ) from None
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not fut]

    def __repr__(self) -> str:
        return (
            f"PushAudioSource(sample_rate={self.sample_rate}, channels={self.channels}, "
            f"queued={self.queued_seconds:.3f}s)"
        )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MixSource(AudioSource):
    """The sum of several sources of one sample rate (int16, clipped); silence if none.

    Sources may be added and removed at any time; each is read for every frame.
    """

    def __init__(
        self, sources: Iterable[AudioSource] = (), *, sample_rate: int = 48000, channels: int = 1
    ) -> None:
        super().__init__(sample_rate, channels)
        self._sources: list[AudioSource] = []
        for s in sources:
            self.add(s)

    @property
    def sources(self) -> list[AudioSource]:
        """The mixed sources (a copy)."""
        return list(self._sources)

    def add(self, source: AudioSource) -> None:
        """Mix ``source`` in from the next frame on (it must run at this mix's rate)."""
        if not isinstance(source, AudioSource):
            raise TypeError(f"expected an AudioSource, got {type(source).__name__}")
        if source.sample_rate != self.sample_rate:
            raise ValueError(
                f"source runs at {source.sample_rate} Hz, the mix at {self.sample_rate} Hz"
            )
        if source not in self._sources:
            self._sources.append(source)

    def remove(self, source: AudioSource) -> None:
        """Stop mixing ``source`` (unknown sources are ignored)."""
        if source in self._sources:
            self._sources.remove(source)

    def read(self, n: int) -> np.ndarray:
        """The sum of the next ``n`` samples of every source."""
        n = max(0, int(n))
        if len(self._sources) == 1:
            return remix(self._sources[0].read(n), self.channels)
        acc = np.zeros((n, self.channels), dtype=np.int32)
        for s in list(self._sources):
            acc += remix(np.asarray(s.read(n), dtype=np.int16).reshape(n, -1), self.channels)
        return np.clip(acc, -32768, 32767).astype(np.int16)


class PushVideoSource(VideoSource):
    """Sends the newest image written to it, ``fps`` times a second (black before any).

    ``write(image)`` takes an RGB ``uint8`` array of shape (height, width, 3) (any size:
    it is scaled) or an ``av.VideoFrame``. Conversion to yuv420p happens in ``write``.
    """

    def __init__(self, width: int = 640, height: int = 480, fps: float = 15) -> None:
        super().__init__(width, height, fps)
        self._frame: av.VideoFrame | None = None
        self._handed = True
        self.frames_written = 0

    def write(self, image: np.ndarray | av.VideoFrame) -> None:
        """Show ``image`` from the next frame on."""
        frame = (
            image
            if isinstance(image, av.VideoFrame)
            else av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image, dtype=np.uint8), format="rgb24"
            )
        )
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        if out is frame:
            out = fresh_frame(frame)
        self._frame, self._handed = out, False
        self.frames_written += 1

    def read(self) -> av.VideoFrame:
        """The newest image as a fresh yuv420p frame."""
        frame = self._frame
        if frame is None:
            return black_frame(self.width, self.height)
        if self._handed:
            return fresh_frame(frame)
        self._handed = True
        return frame
