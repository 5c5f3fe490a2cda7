"""Files: play any audio/video file PyAV reads as a source; record remote users to files.

- :class:`FileAudioSource` / :class:`FileVideoSource` decode in a background thread a little
  ahead of time (bounded queues), so the engine's real-time pumps only pick up ready
  samples and frames; optionally looping. :class:`FileSource` opens both of a file.
- :class:`RecorderSink` writes each remote user's audio to ``<prefix><user>.wav`` and video
  to ``<prefix><user>.mkv`` (VP8) from one writer thread; the engine's frame taps only
  enqueue. Gaps (nothing received for a while) are recorded as silence, so the file's
  timeline follows the call's.

Nothing here decodes, encodes or writes on the event loop.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import os
import queue
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from .convert import PcmConverter, black_frame, fresh_frame
from .sources import AudioSource, VideoSource
from .tracks import _audio_to_int16 as audio_to_int16

__all__ = ["FileAudioSource", "FileSource", "FileVideoSource", "RecordedFiles", "RecorderSink"]

log = logging.getLogger(__name__)

_END = object()  # end of file (not looping)
_POLL = 0.1  # how often blocked worker threads look at their stop flag


def _open(path: str | os.PathLike[str], kind: str) -> tuple[Any, Any]:
    container = av.open(os.fspath(path))
    streams: Any = container.streams.audio if kind == "audio" else container.streams.video
    if not streams:
        container.close()
        raise ValueError(f"{os.fspath(path)!r} has no {kind} stream")
    stream = streams[0]
    stream.thread_type = "AUTO"
    return container, stream


class _Decoder:
    """A daemon thread running ``produce(put)`` into a bounded queue until done or stopped."""

    def __init__(
        self, name: str, size: int, produce: Callable[[Callable[[Any], bool]], None]
    ) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(size)
        self._stop = threading.Event()
        self._produce = produce
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue ``item``, waiting for room; False once stopped."""
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._produce(self._put)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: decoding stopped: %s", self._thread.name, self.error)
        finally:
            self._put(_END)

    def stop(self) -> None:
        self._stop.set()


class FileAudioSource(AudioSource):
    """The audio of a file (anything PyAV/FFmpeg reads), as an AudioSource.

    Decoded and converted to int16 at ``sample_rate`` x ``channels`` in a thread that stays
    about ``buffer_ms`` ahead of playback. With ``loop`` it starts over at the end; otherwise
    it plays silence after the end and :attr:`finished` becomes True. A decoder that cannot
    keep up gives silence rather than blocking. Raises FileNotFoundError / ValueError (no
    audio stream) / ``av.FFmpegError`` (not a media file) in the constructor.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = False,
        sample_rate: int = 48000,
        channels: int = 1,
        buffer_ms: int = 500,
    ) -> None:
        super().__init__(sample_rate, channels)
        self.path = os.fspath(path)
        self.loop = bool(loop)
        container, stream = _open(path, "audio")
        self.duration: float | None = (
            float(stream.duration * stream.time_base)
            if stream.duration is not None
            else container.duration / 1e6
            if container.duration
            else None
        )
        """Length of the file's audio in seconds (None if the file does not say)."""
        self._pending = np.zeros((0, channels), dtype=np.int16)
        self._eof = False
        self.samples_read = 0
        self.underruns = 0
        # about 20 ms per queued chunk: enough chunks for buffer_ms
        self._decoder = _Decoder(
            f"file audio {self.path}",
            max(4, buffer_ms // 20),
            lambda put: self._produce(container, stream, put),
        )

    def _produce(self, container: Any, stream: Any, put: Callable[[Any], bool]) -> None:
        conv = PcmConverter(self.sample_rate, self.channels)
        try:
            while True:
                for frame in container.decode(stream):
                    data = audio_to_int16(frame)
                    out = conv.convert(data, frame.sample_rate)
                    if len(out) and not put(out):
                        return
                if not self.loop:
                    return
                container.seek(0)
                conv = PcmConverter(self.sample_rate, self.channels)
        finally:
            container.close()

    @property
    def finished(self) -> bool:
        """True once a non-looping file has been played to the end."""
        return self._eof and not len(self._pending)

    @property
    def position(self) -> float:
        """Seconds of the file handed out so far (across loops)."""
        return self.samples_read / self.sample_rate

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples; silence after the end or while the decoder is behind."""
        n = max(0, int(n))
        chunks, have = [self._pending], len(self._pending)
        while have < n and not self._eof:
            try:
                item = self._decoder.queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._eof = True
                break
            chunks.append(item)
            have += len(item)
        buf = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        out, self._pending = buf[:n], buf[n:]
        got = len(out)
        self.samples_read += got
        if got < n:
            if not self._eof:
                self.underruns += 1
            out = np.concatenate([out, np.zeros((n - got, self.channels), dtype=np.int16)])
        return out

    def close(self) -> None:
        """Stop the decoder thread. Idempotent."""
        self._decoder.stop()
        super().close()

    def __repr__(self) -> str:
        return (
            f"FileAudioSource({self.path!r}, loop={self.loop}, "
            f"sample_rate={self.sample_rate}, channels={self.channels})"
        )


class FileVideoSource(VideoSource):
    """The video of a file, as a VideoSource paced by the engine at ``fps``.

    ``width`` / ``height`` default to the file's (rounded down to even), ``fps`` to its
    average frame rate. A thread decodes and converts to yuv420p ahead of time; ``read``
    returns the frame due at the current playback time (``reads / fps``), by presentation
    timestamps, so a file at another frame rate plays at its own speed. After the end (not
    looping) the last frame repeats and :attr:`finished` becomes True.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = False,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        container, stream = _open(path, "video")
        cc = stream.codec_context
        w = width or max(16, cc.width // 2 * 2)
        h = height or max(16, cc.height // 2 * 2)
        rate = fps or (float(stream.average_rate) if stream.average_rate else 25.0)
        try:
            super().__init__(w, h, min(rate, 120.0))
        except ValueError:
            container.close()
            raise
        self.path = os.fspath(path)
        self.loop = bool(loop)
        self.reads = 0
        self._next: tuple[float, av.VideoFrame] | None = None
        self._last: av.VideoFrame | None = None
        self._last_handed = True
        self._eof = False
        self._decoder = _Decoder(
            f"file video {self.path}",
            max(4, int(self.fps) // 2),
            lambda put: self._produce(container, stream, put),
        )

    def _produce(self, container: Any, stream: Any, put: Callable[[Any], bool]) -> None:
        offset, first, last = 0.0, None, 0.0
        try:
            while True:
                for frame in container.decode(stream):
                    t = float(frame.time) if frame.time is not None else last + 1 / self.fps
                    if first is None:
                        first = t
                    last = t
                    out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
                    if not put((offset + t - first, out)):
                        return
                if not self.loop or first is None:
                    return
                offset += last - first + 1 / self.fps
                first = None
                container.seek(0)
        finally:
            container.close()

    @property
    def finished(self) -> bool:
        """True once a non-looping file has shown its last frame."""
        return self._eof and self._next is None

    def read(self) -> av.VideoFrame:
        """The frame due now (a fresh object each call); black before the first."""
        clock = self.reads / self.fps
        self.reads += 1
        while not self._eof:
            if self._next is None:
                try:
                    item = self._decoder.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    self._eof = True
                    break
                self._next = item
            t, frame = self._next
            if t > clock + 0.5 / self.fps and self._last is not None:
                break
            self._last, self._last_handed, self._next = frame, False, None
        if self._last is None:
            return black_frame(self.width, self.height)
        if self._last_handed:  # the engine stamps pts on frames: never hand one out twice
            return fresh_frame(self._last)
        self._last_handed = True
        return self._last

    def close(self) -> None:
        """Stop the decoder thread. Idempotent."""
        self._decoder.stop()
        super().close()

    def __repr__(self) -> str:
        return (
            f"FileVideoSource({self.path!r}, loop={self.loop}, width={self.width}, "
            f"height={self.height}, fps={self.fps})"
        )


class FileSource:
    """A media file as the engine's sources: ``.audio`` and ``.video`` (None if absent).

    ``CallEngine(url, audio_source=f.audio, video_source=f.video)``. Each kind decodes in
    its own thread; see :class:`FileAudioSource` and :class:`FileVideoSource`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = False,
        audio: bool = True,
        video: bool = True,
        sample_rate: int = 48000,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        self.path = os.fspath(path)
        with av.open(self.path) as probe:
            has_audio = bool(probe.streams.audio)
            has_video = bool(probe.streams.video)
        if not (has_audio and audio) and not (has_video and video):
            wanted = " or ".join(k for k, on in (("audio", audio), ("video", video)) if on)
            raise ValueError(f"{self.path!r} has no {wanted or 'wanted'} stream")
        self.audio: FileAudioSource | None = (
            FileAudioSource(path, loop=loop, sample_rate=sample_rate)
            if audio and has_audio
            else None
        )
        self.video: FileVideoSource | None = (
            FileVideoSource(path, loop=loop, width=width, height=height, fps=fps)
            if video and has_video
            else None
        )

    @property
    def finished(self) -> bool:
        """True once every kind has played to the end (never while looping)."""
        return all(s.finished for s in (self.audio, self.video) if s is not None)

    def close(self) -> None:
        """Stop both decoders. Idempotent."""
        for s in (self.audio, self.video):
            if s is not None:
                s.close()


# ---------------------------------------------------------------------------------- recording


@dataclass
class RecordedFiles:
    """What a :class:`RecorderSink` wrote for one user."""

    audio: Path | None = None
    video: Path | None = None
    sample_rate: int = 48000
    """Rate of the WAV file."""
    audio_samples: int = 0
    """Samples written to the WAV file (silence for gaps included)."""
    video_frames: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        """Length of the WAV file in seconds."""
        return self.audio_samples / self.sample_rate


GAP_FILL = 0.2
"""A recorded stream that falls this many seconds behind the wall clock gets silence."""
_MAX_VIDEO_BACKLOG = 30


class RecorderSink:
    """Records remote users to files in ``directory``: ``<prefix><user>.wav`` (int16 at
    ``sample_rate`` x ``channels``) and, with ``video``, ``<prefix><user>.mkv`` (VP8).

    Feed it from the engine's frame taps::

        engine.add_audio_tap(user, rec.audio_tap(user))
        engine.add_video_tap(user, rec.video_tap(user))

    Taps only enqueue (with the arrival time); one writer thread converts, encodes and
    writes. ``await close()`` flushes and finalises every file and returns
    :attr:`files`. Video frames are dropped (counted in :attr:`video_dropped`) when
    encoding falls more than ~30 frames behind.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        prefix: str = "",
        sample_rate: int = 48000,
        channels: int = 1,
        video: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.record_video = bool(video)
        self.files: dict[str, RecordedFiles] = {}
        self.video_dropped = 0
        self._audio_taps: dict[str, Callable[[np.ndarray, int], None]] = {}
        self._video_taps: dict[str, Callable[[av.VideoFrame], None]] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._video_backlog = 0
        self._closed = False
        self._writers: dict[tuple[str, str], Any] = {}
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # -- loop side -------------------------------------------------------------------------
    def write_audio(self, user_id: str, samples: np.ndarray, sample_rate: int) -> None:
        """Queue ``samples`` (int16 (n, channels)) of ``user_id`` received just now."""
        if not self._closed:
            self._queue.put(("audio", user_id, samples, sample_rate, time.monotonic()))

    def write_video(self, user_id: str, frame: av.VideoFrame) -> None:
        """Queue a decoded frame of ``user_id`` received just now."""
        if self._closed or not self.record_video:
            return
        if self._video_backlog >= _MAX_VIDEO_BACKLOG:
            self.video_dropped += 1
            return
        self._video_backlog += 1
        self._queue.put(("video", user_id, frame, 0, time.monotonic()))

    def audio_tap(self, user_id: str) -> Callable[[np.ndarray, int], None]:
        """``fn(samples, sample_rate)`` recording ``user_id`` (the same object per user)."""
        fn = self._audio_taps.get(user_id)
        if fn is None:

            def fn(samples: np.ndarray, sample_rate: int) -> None:
                self.write_audio(user_id, samples, sample_rate)

            self._audio_taps[user_id] = fn
        return fn

    def video_tap(self, user_id: str) -> Callable[[av.VideoFrame], None]:
        """``fn(frame)`` recording ``user_id``'s video (the same object per user)."""
        fn = self._video_taps.get(user_id)
        if fn is None:

            def fn(frame: av.VideoFrame) -> None:
                self.write_video(user_id, frame)

            self._video_taps[user_id] = fn
        return fn

    async def close(self) -> dict[str, RecordedFiles]:
        """Finish writing (in the writer thread) and close every file; idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        return self.files

    # -- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            kind, user, data, rate, at = item
            rec = self.files.setdefault(user, RecordedFiles())
            try:
                if kind == "audio":
                    self._write_audio(user, rec, data, rate, at)
                else:
                    self._video_backlog -= 1
                    self._write_video(user, rec, data, at)
            except Exception as exc:
                msg = f"{kind} of {user}: {type(exc).__name__}: {exc}"
                if msg not in rec.errors:
                    rec.errors.append(msg)
                    log.warning("recorder: %s", msg)
        for (user, kind), writer in self._writers.items():
            try:
                writer.close()
            except Exception as exc:
                self.files[user].errors.append(f"closing {kind}: {exc}")

    def _write_audio(
        self, user: str, rec: RecordedFiles, samples: np.ndarray, rate: int, at: float
    ) -> None:
        writer = self._writers.get((user, "audio"))
        if writer is None:
            path = self.directory / f"{self.prefix}{user}.wav"
            writer = _WavWriter(path, self.sample_rate, self.channels)
            self._writers[(user, "audio")] = writer
            rec.audio = path
            rec.sample_rate = self.sample_rate
        data = writer.conv.convert(samples, rate)
        if writer.t0 is None:
            writer.t0 = at - len(data) / self.sample_rate
        due = int((at - writer.t0) * self.sample_rate) - len(data)
        if due - writer.written > GAP_FILL * self.sample_rate:
            writer.write(np.zeros((due - writer.written, self.channels), dtype=np.int16))
        writer.write(data)
        rec.audio_samples = writer.written

    def _write_video(self, user: str, rec: RecordedFiles, frame: av.VideoFrame, at: float) -> None:
        writer = self._writers.get((user, "video"))
        if writer is None:
            path = self.directory / f"{self.prefix}{user}.mkv"
            writer = _VideoWriter(path, frame.width // 2 * 2, frame.height // 2 * 2, at)
            self._writers[(user, "video")] = writer
            rec.video = path
        writer.write(frame, at)
        rec.video_frames = writer.frames


class _WavWriter:
    def __init__(self, path: Path, rate: int, channels: int) -> None:
        self.conv = PcmConverter(rate, channels)
        self.t0: float | None = None
        self.written = 0
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()
        self._wav.setnchannels(channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)

    def write(self, data: np.ndarray) -> None:
        self._wav.writeframes(np.ascontiguousarray(data, dtype="<i2").tobytes())
        self.written += len(data)

    def close(self) -> None:
        self._wav.close()


class _VideoWriter:
    _TB = fractions.Fraction(1, 1000)

    def __init__(self, path: Path, width: int, height: int, t0: float) -> None:
        self.width, self.height, self.t0 = width, height, t0
        self.frames = 0
        self._last_pts = -1
        self._out = av.open(str(path), "w", format="matroska")
        try:
            self._stream = self._out.add_stream(
                "libvpx",
                rate=30,
                options={"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"},
            )
        except (av.FFmpegError, ValueError):  # no libvpx: Motion JPEG plays everywhere
            self._stream = self._out.add_stream("mjpeg", rate=30)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = (
            "yuv420p" if self._stream.codec_context.name != "mjpeg" else "yuvj420p"
        )
        self._stream.codec_context.time_base = self._TB
        self._stream.codec_context.bit_rate = 1_000_000

    def write(self, frame: av.VideoFrame, at: float) -> None:
        out = frame.reformat(width=self.width, height=self.height, format=self._stream.pix_fmt)
        if out is frame:  # never stamp a frame other taps may still hold
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)
        pts = max(self._last_pts + 1, round((at - self.t0) * 1000))
        out.pts, out.time_base = pts, self._TB
        self._last_pts = pts
        for packet in self._stream.encode(out):
            self._out.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
        finally:
            self._out.close()
