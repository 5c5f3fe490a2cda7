"""Files: FileSource decodes ahead in threads and plays at real-time rates; RecorderSink."""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from callkit.media import (
    FileAudioSource,
    FileSource,
    FileVideoSource,
    RecorderSink,
    TestPatternSource,
    ToneSource,
)
from callkit.media.volume import rms_dbfs


def write_audio(
    path: Path,
    seconds: float,
    *,
    rate: int = 44100,
    codec: str = "libopus",
    level: float = -20.0,
    freq: float = 440.0,
) -> None:
    """Encode a stereo tone with PyAV (any container/codec FFmpeg writes)."""
    tone = ToneSource(freq, level, sample_rate=rate, channels=2).read(int(seconds * rate))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate, layout="stereo")
        for i in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[i : i + 1024].reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate = rate
            frame.pts = i
            frame.time_base = fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_video(
    path: Path,
    frames: int,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    with_audio: bool = False,
) -> None:
    """A test-pattern video (frame counter in the picture), optionally with a tone."""
    pattern = TestPatternSource(*size, fps=fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx", rate=fps, options={"deadline": "realtime"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate = 2_000_000
        audio = out.add_stream("libopus", rate=48000, layout="mono") if with_audio else None
        tone = ToneSource(440, -20)
        for i in range(frames):
            frame = pattern.read()
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
            if audio is not None:
                n = 48000 // fps
                a = av.AudioFrame.from_ndarray(
                    tone.read(n).reshape(1, -1), format="s16", layout="mono"
                )
                a.sample_rate, a.pts, a.time_base = 48000, i * n, fractions.Fraction(1, 48000)
                for packet in audio.encode(a):
                    out.mux(packet)
        for s in (stream, audio):
            if s is not None:
                for packet in s.encode(None):
                    out.mux(packet)


def drain(src: FileAudioSource, seconds: float) -> np.ndarray:
    """Read like the engine (20 ms per read), giving the decoder thread time to keep up."""
    chunks = []
    for _ in range(int(seconds * 50)):
        deadline = time.monotonic() + 0.5
        while src._decoder.queue.empty() and not src._eof and time.monotonic() < deadline:
            time.sleep(0.001)
        chunks.append(src.read(960))
    return np.concatenate(chunks)


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [
        ("tone.ogg", "libopus", 48000),
        ("tone.mp3", "libmp3lame", 44100),
        ("tone.wav", "pcm_s16le", 16000),
    ],
)
def test_file_audio_plays_at_its_level_then_finishes(
    tmp_path: Path, name: str, codec: str, rate: int
) -> None:
    path = tmp_path / name
    write_audio(path, 1.0, rate=rate, codec=codec)
    src = FileAudioSource(path)
    try:
        assert src.duration is not None and abs(src.duration - 1.0) < 0.1
        got = drain(src, 1.4)
        assert got.shape[1] == 1 and got.dtype == np.int16
        sound = np.flatnonzero(np.abs(got[:, 0]) > 100)
        played = (sound[-1] - sound[0]) / 48000
        assert abs(played - 1.0) < 0.08, played  # resampled to 48 kHz, full length
        assert abs(rms_dbfs(got[sound[0] + 4800 : sound[-1] - 4800]) + 20) < 0.5
        assert src.finished and not got[-4800:].any()  # silence after the end
    finally:
        src.close()


def test_file_audio_loops(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_audio(path, 0.3, rate=48000, codec="pcm_s16le")
    src = FileAudioSource(path, loop=True)
    try:
        got = drain(src, 1.2)
        assert not src.finished and src.position == pytest.approx(1.2, abs=0.03)
        assert abs(rms_dbfs(got) + 20) < 0.5  # no gaps between the loops
    finally:
        src.close()


def test_file_video_follows_timestamps_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "pattern.webm"
    write_video(path, frames=20, fps=10)
    once = FileVideoSource(path, fps=20)  # read twice as fast as recorded
    looped = FileVideoSource(path, loop=True)
    try:
        assert (once.width, once.height, looped.fps) == (160, 120, 10)

        def counters(src: FileVideoSource, n: int) -> list[int]:
            out = []
            for _ in range(n):
                deadline = time.monotonic() + 0.5
                while src._decoder.queue.empty() and not src._eof and time.monotonic() < deadline:
                    time.sleep(0.001)
                out.append(TestPatternSource.decode_counter(src.read()))
            return out

        slow = counters(once, 44)
        assert slow[:6] == [0, 0, 1, 1, 2, 2]  # each file frame shown twice
        assert slow[-4:] == [19, 19, 19, 19] and once.finished
        assert counters(looped, 45) == list(range(20)) * 2 + list(range(5))
        assert not looped.finished
    finally:
        once.close()
        looped.close()


def test_file_source_opens_audio_and_video_and_reports_problems(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_video(path, frames=10, fps=10, with_audio=True)
    f = FileSource(path)
    try:
        assert f.audio is not None and f.video is not None
        assert f.audio.sample_rate == 48000 and f.video.fps == 10
    finally:
        f.close()
    audio_only = tmp_path / "a.ogg"
    write_audio(audio_only, 0.2)
    g = FileSource(audio_only, loop=True)
    assert g.video is None and g.audio is not None and g.audio.loop
    g.close()
    with pytest.raises(ValueError, match="has no video stream"):
        FileSource(audio_only, audio=False)
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.mp3")


async def test_recorder_writes_wav_and_mkv_off_the_loop(tmp_path: Path) -> None:
    rec = RecorderSink(tmp_path, prefix="call-")
    tone = ToneSource(440, -20, channels=2)
    pattern = TestPatternSource(160, 120, 15)
    for i in range(50):  # 1 s: 20 ms audio, video at 12.5 fps
        rec.audio_tap("alice")(tone.read(960), 48000)
        if i % 4 == 0:
            rec.video_tap("alice")(pattern.read())
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.35)  # a gap: recorded as silence
    rec.write_audio("alice", tone.read(960), 48000)
    files = await rec.close()
    alice = files["alice"]
    assert alice.errors == [] and alice.audio == tmp_path / "call-alice.wav"
    with wave.open(str(alice.audio)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48000, 1, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert w.getnframes() == alice.audio_samples
    # 1 s + gap + 20 ms; the gap is wall time, so a loaded machine stretches it
    assert 1.3 < alice.audio_seconds < 2.5, alice.audio_seconds
    # the tone's level, over what was not gap-filled (late wake-ups add wall-clock silence)
    assert abs(rms_dbfs(data[np.abs(data) > 0][:48000]) + 20) < 0.2
    silent = np.flatnonzero(np.abs(data) == 0)
    assert len(silent) > 0.2 * 48000  # the gap
    with av.open(str(alice.video)) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert len(frames) == alice.video_frames == 13
    assert [TestPatternSource.decode_counter(f) for f in frames] == list(range(13))
    assert await rec.close() is files  # idempotent
