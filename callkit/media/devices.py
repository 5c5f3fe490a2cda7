"""Real devices: microphone and speaker through sounddevice (PortAudio), camera through PyAV.

Nothing here is imported until used: ``import media`` works on a machine without PortAudio,
sounddevice or a camera. Opening a device that is not there raises
:class:`media.errors.DeviceError` -- a ``CallError`` with code ``-1101`` -- whose message
names what is missing (the PortAudio library, the sounddevice package, a device, an FFmpeg
input format).

- :class:`MicrophoneSource` is an :class:`~media.sources.AudioSource`: PortAudio's callback
  thread fills a small FIFO that the engine's 20 ms pump drains.
- :class:`SpeakerSink` plays and mixes any number of inputs (one per remote user):
  ``sink.write(samples, sample_rate, key)``; ``sink.tap(key)`` is a ready-made engine audio tap.
- :class:`CameraSource` is a :class:`~media.sources.VideoSource`: a thread captures and
  converts frames with PyAV (v4l2 on Linux, avfoundation on macOS, dshow on Windows); ``read``
  returns the newest one.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from .convert import PcmConverter, SampleFifo, black_frame, fresh_frame
from .errors import DeviceError
from .sources import AudioSource, VideoSource

__all__ = [
    "AudioDevice",
    "CameraDevice",
    "CameraSource",
    "MicrophoneSource",
    "SpeakerSink",
    "list_audio_devices",
    "list_cameras",
]

log = logging.getLogger(__name__)


def _sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio or package into DeviceError(-1101)."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise DeviceError(
            f"the PortAudio library is not available ({exc}); install it "
            "(Debian/Ubuntu: apt-get install libportaudio2; the macOS and Windows "
            "sounddevice wheels include it)"
        ) from None
    except ImportError as exc:
        raise DeviceError(
            f"the sounddevice package is not installed ({exc}); "
            "pip install sounddevice (the 'devices' extra)"
        ) from None
    return sounddevice


# ---------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class AudioDevice:
    """One PortAudio device, as :func:`list_audio_devices` reports it."""

    index: int
    """PortAudio's device index (pass it as ``device=``)."""
    name: str
    host_api: str
    """e.g. "ALSA", "Core Audio", "Windows WASAPI"."""
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float
    is_default_input: bool
    is_default_output: bool


def list_audio_devices() -> list[AudioDevice]:
    """Every PortAudio input and output device; raises DeviceError without PortAudio."""
    sd = _sounddevice()
    try:
        raw = sd.query_devices()
        apis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as exc:  # PortAudio could not initialise
        raise DeviceError(f"PortAudio cannot list devices: {exc}") from None
    devices = []
    for info in raw:
        idx = int(info["index"])
        devices.append(
            AudioDevice(
                index=idx,
                name=str(info["name"]),
                host_api=str(apis[info["hostapi"]]["name"]),
                max_input_channels=int(info["max_input_channels"]),
                max_output_channels=int(info["max_output_channels"]),
                default_sample_rate=float(info["default_samplerate"]),
                is_default_input=idx == default_in,
                is_default_output=idx == default_out,
            )
        )
    return devices


def find_audio_device(device: int | str | None, kind: Literal["input", "output"]) -> AudioDevice:
    """The device to open: None -> the default, an int -> that index, a str -> the first
    whose name contains it (case-insensitive). Raises DeviceError naming what is missing."""
    what = "microphone" if kind == "input" else "speaker"
    devices = list_audio_devices()

    def usable(d: AudioDevice) -> bool:
        return (d.max_input_channels if kind == "input" else d.max_output_channels) > 0

    if device is None:
        for d in devices:
            if usable(d) and (d.is_default_input if kind == "input" else d.is_default_output):
                return d
        found = [d for d in devices if usable(d)]
        if found:
            return found[0]
        raise DeviceError(f"no {what}: PortAudio found no {kind} device")
    if isinstance(device, int) and not isinstance(device, bool):
        for d in devices:
            if d.index == device:
                if not usable(d):
                    raise DeviceError(f"device {device} ({d.name!r}) has no {kind} channels")
                return d
        raise DeviceError(f"no {what} with index {device}; there are {len(devices)} devices")
    if isinstance(device, str):
        for d in devices:
            if usable(d) and device.lower() in d.name.lower():
                return d
        names = ", ".join(repr(d.name) for d in devices if usable(d)) or "none"
        raise DeviceError(f"no {what} named like {device!r} (available: {names})")
    raise ValueError(f"device must be None, an int or a str, got {device!r}")


# ---------------------------------------------------------------------------------- audio


class MicrophoneSource(AudioSource):
    """Live microphone input (PortAudio), as an AudioSource for the engine.

    ``device``: None (the default input), a PortAudio index or part of a device name (see
    :func:`list_audio_devices`). The stream opens in the constructor, so a missing device
    fails right away with DeviceError(-1101). At most ``buffer_ms`` of audio is held;
    beyond that (the device's clock running ahead of the pump) the oldest is dropped, so the
    latency stays bounded. Reads never block: missing samples are silence.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int = 48000,
        channels: int = 1,
        buffer_ms: int = 100,
        latency: str | float = "low",
    ) -> None:
        super().__init__(sample_rate, channels)
        sd = _sounddevice()
        self.device = find_audio_device(device, "input")
        if channels > self.device.max_input_channels:
            raise DeviceError(
                f"microphone {self.device.name!r} has "
                f"{self.device.max_input_channels} channels, {channels} asked for"
            )
        self._fifo = SampleFifo(max(1, sample_rate * buffer_ms // 1000), channels)
        self.overflows = 0
        """PortAudio input overflows reported to the callback."""
        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=sample_rate,
                channels=channels,
                dtype="int16",
                latency=latency,
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:  # ValueError: unsupported settings
            raise DeviceError(
                f"microphone {self.device.name!r} cannot be opened at "
                f"{sample_rate} Hz x {channels}: {exc}"
            ) from None

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        if status and status.input_overflow:
            self.overflows += 1
        self._fifo.write(indata.copy())

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` captured samples, int16 (n, channels); silence if not there yet."""
        return self._fifo.read(max(0, int(n)))

    @property
    def underruns(self) -> int:
        """Reads that found less captured audio than asked for."""
        return self._fifo.underruns

    def close(self) -> None:
        """Stop and close the input stream. Idempotent."""
        if not self.closed:
            try:
                self._stream.close(ignore_errors=True)
            finally:
                super().close()

    def __repr__(self) -> str:
        return (
            f"MicrophoneSource(device={self.device.name!r}, "
            f"sample_rate={self.sample_rate}, channels={self.channels})"
        )


class SpeakerSink:
    """Plays audio on a PortAudio output device, mixing any number of inputs.

    Each input (``key``, e.g. a remote user id) has its own FIFO; PortAudio's callback sums
    them. ``write(samples, sample_rate, key)`` takes int16 or float arrays of any rate and
    channel count (converted per input). ``tap(key)`` returns a function
    ``fn(samples, sample_rate)`` -- the same object for the same key -- that fits
    ``engine.add_audio_tap(user_id, fn)``. An input that runs dry plays silence until
    ``prebuffer_ms`` are queued again; at most ``buffer_ms`` are held per input.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int = 48000,
        channels: int = 2,
        buffer_ms: int = 300,
        prebuffer_ms: int = 40,
        latency: str | float = "low",
    ) -> None:
        sd = _sounddevice()
        self.device = find_audio_device(device, "output")
        channels = min(channels, self.device.max_output_channels)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._capacity = max(1, sample_rate * buffer_ms // 1000)
        self._prebuffer = sample_rate * prebuffer_ms // 1000
        self._inputs: dict[Any, tuple[SampleFifo, PcmConverter]] = {}
        self._taps: dict[Any, Callable[[np.ndarray, int], None]] = {}
        self._lock = threading.Lock()
        self.closed = False
        self.underflows = 0
        """PortAudio output underflows reported to the callback."""
        try:
            self._stream = sd.OutputStream(
                device=self.device.index,
                samplerate=sample_rate,
                channels=channels,
                dtype="int16",
                latency=latency,
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(
                f"speaker {self.device.name!r} cannot be opened at "
                f"{sample_rate} Hz x {channels}: {exc}"
            ) from None

    def _input(self, key: Any) -> tuple[SampleFifo, PcmConverter]:
        with self._lock:
            entry = self._inputs.get(key)
            if entry is None:
                entry = (
                    SampleFifo(self._capacity, self.channels, prebuffer=self._prebuffer),
                    PcmConverter(self.sample_rate, self.channels),
                )
                self._inputs[key] = entry
            return entry

    def write(self, samples: Any, sample_rate: int = 48000, key: Any = None) -> None:
        """Queue ``samples`` for input ``key`` (mixed with the other inputs)."""
        if self.closed:
            return
        fifo, conv = self._input(key)
        fifo.write(conv.convert(samples, sample_rate))

    def tap(self, key: Any) -> Callable[[np.ndarray, int], None]:
        """``fn(samples, sample_rate)`` writing to input ``key`` (cached per key)."""
        fn = self._taps.get(key)
        if fn is None:

            def fn(samples: np.ndarray, sample_rate: int) -> None:
                self.write(samples, sample_rate, key)

            self._taps[key] = fn
        return fn

    def remove_input(self, key: Any) -> None:
        """Forget input ``key`` and whatever it had queued."""
        with self._lock:
            self._inputs.pop(key, None)
        self._taps.pop(key, None)

    def _callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        if status and status.output_underflow:
            self.underflows += 1
        with self._lock:
            fifos = [fifo for fifo, _ in self._inputs.values()]
        if not fifos:
            outdata[:] = 0
            return
        if len(fifos) == 1:
            fifos[0].read_into(outdata)
            return
        acc = np.zeros((frames, self.channels), dtype=np.int32)
        part = np.empty((frames, self.channels), dtype=np.int16)
        for fifo in fifos:
            if fifo.read_into(part):
                acc += part
        np.clip(acc, -32768, 32767, out=acc)
        outdata[:] = acc

    def close(self) -> None:
        """Stop and close the output stream. Idempotent."""
        if not self.closed:
            self.closed = True
            self._stream.close(ignore_errors=True)

    def __repr__(self) -> str:
        return (
            f"SpeakerSink(device={self.device.name!r}, sample_rate={self.sample_rate}, "
            f"channels={self.channels})"
        )


# ---------------------------------------------------------------------------------- camera

_CAMERA_FORMATS = {"linux": "v4l2", "darwin": "avfoundation", "win32": "dshow"}


@dataclass(frozen=True)
class CameraDevice:
    """A camera :func:`list_cameras` found: pass ``device`` to :class:`CameraSource`."""

    device: str
    name: str


def list_cameras() -> list[CameraDevice]:
    """Video capture devices: ``/dev/video*`` on Linux. Elsewhere FFmpeg offers no listing
    API through PyAV, so this returns [] (use ``device="0"`` on macOS, ``"video=NAME"`` on
    Windows)."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p)):
        name_file = Path("/sys/class/video4linux") / os.path.basename(path) / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = os.path.basename(path)
        found.append(CameraDevice(path, name))
    return found


def _default_camera(input_format: str) -> str:
    if input_format == "v4l2":
        cams = list_cameras()
        if not cams:
            raise DeviceError("no camera: no /dev/video* device")
        return cams[0].device
    if input_format == "avfoundation":
        return "0"
    raise DeviceError(f"no default camera for {input_format!r}: pass device= (dshow: 'video=NAME')")


class CameraSource(VideoSource):
    """Live camera frames through PyAV, as a VideoSource for the engine.

    ``device`` defaults to the first camera (``/dev/video0`` on Linux, ``"0"`` on macOS);
    ``input_format`` to the platform's FFmpeg input (v4l2, avfoundation, dshow). Any other
    FFmpeg input works too, e.g. ``CameraSource("testsrc=size=320x240:rate=15,realtime",
    input_format="lavfi")``. A capture thread decodes and converts every frame to yuv420p at
    ``width`` x ``height``; ``read`` returns the newest frame (a black one before the first),
    so a slow camera repeats frames and a fast one drops them. The device opens in the
    constructor (which may block briefly): a missing one raises DeviceError(-1101).
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30,
        input_format: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(width, height, fps)
        fmt = input_format or _CAMERA_FORMATS.get(sys.platform.rstrip("0123456789"))
        if fmt is None:
            raise DeviceError(
                f"no camera input format known for platform {sys.platform!r}; pass input_format="
            )
        known = {name for names in av.formats_available for name in names.split(",")}
        if fmt not in known:  # e.g. "video4linux2,v4l2" is one entry
            raise DeviceError(
                f"this PyAV build's FFmpeg has no {fmt!r} input format, so it "
                "cannot open cameras (install a PyAV built with it)"
            )
        self.device = device if device is not None else _default_camera(fmt)
        self.input_format = fmt
        opts = {"video_size": f"{width}x{height}", "framerate": f"{fps:g}"}
        if fmt == "lavfi":
            opts = {}
        opts.update(options or {})
        try:
            self._container = av.open(self.device, format=fmt, options=opts)
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, OSError, IndexError) as exc:
            raise DeviceError(f"camera {self.device!r} ({fmt}) cannot be opened: {exc}") from None
        self._lock = threading.Lock()
        self._latest: av.VideoFrame | None = None
        self._handed_out = True
        self._stop = threading.Event()
        self.frames_captured = 0
        self.error: str | None = None
        """Why capture stopped early, if it did."""
        self._thread = threading.Thread(
            target=self._capture, name=f"camera {self.device}", daemon=True
        )
        self._thread.start()

    def _capture(self) -> None:
        try:
            for frame in self._container.decode(self._stream):
                if self._stop.is_set():
                    break
                out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
                with self._lock:
                    self._latest, self._handed_out = out, False
                self.frames_captured += 1
        except Exception as exc:
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("camera %s stopped: %s", self.device, self.error)
        finally:
            self._container.close()

    def read(self) -> av.VideoFrame:
        """The newest captured frame (yuv420p); a fresh object on every call."""
        with self._lock:
            frame, handed = self._latest, self._handed_out
            self._handed_out = True
        if frame is None:
            return black_frame(self.width, self.height)
        if handed:  # the engine stamps pts on what it gets: never hand one object out twice
            return fresh_frame(frame)
        return frame

    def close(self) -> None:
        """Stop capturing (the thread closes the device after its current frame)."""
        if not self.closed:
            self._stop.set()
            super().close()

    def __repr__(self) -> str:
        return (
            f"CameraSource({self.device!r}, input_format={self.input_format!r}, "
            f"width={self.width}, height={self.height}, fps={self.fps})"
        )
