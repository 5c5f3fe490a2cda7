"""The bot API over real calls: push numpy in, pull numpy out; the echo and record bots."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from callkit import CallMediaType
from callkit.media import PushAudioSource, TestPatternSource, ToneSource
from callkit.media.volume import rms_dbfs
from callkit.samples.echo_bot import EchoBot
from callkit.samples.record_bot import RecordBot

pytestmark = pytest.mark.loopback

RATE = 48000


class Collector:
    """Collects a remote_audio stream with arrival times (a task; stops when it ends)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.frames: list[tuple[float, np.ndarray]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for samples in self.stream:
            self.frames.append((time.monotonic(), samples))

    def since(self, index: int) -> tuple[float, np.ndarray]:
        """Arrival time of frame ``index`` and all samples from it on (mono)."""
        return self.frames[index][0], np.concatenate([f for _, f in self.frames[index:]])[:, 0]


def find(signal: np.ndarray, received: np.ndarray) -> tuple[int, float]:
    """Offset of ``signal`` in ``received`` by cross-correlation (FFT), and the normalised
    correlation peak (1.0 = identical shape)."""
    n = len(received) + len(signal)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(
        np.fft.rfft(received.astype(np.float64), size)
        * np.conj(np.fft.rfft(signal.astype(np.float64), size)),
        size,
    )
    corr = corr[: len(received) - len(signal) + 1]
    lag = int(np.argmax(np.abs(corr)))
    window = received[lag : lag + len(signal)].astype(np.float64)
    norm = np.sqrt(
        np.dot(window, window) * np.dot(signal.astype(np.float64), signal.astype(np.float64))
    )
    return lag, float(abs(corr[lag]) / norm) if norm else 0.0


def probe_signal(
    seconds: float, rate: int, level_dbfs: float = -20.0, *, down: bool = False
) -> np.ndarray:
    """A linear chirp 300 Hz -> 3.4 kHz (or down) at ``level_dbfs`` RMS (speech band: Opus
    keeps it)."""
    t = np.arange(int(seconds * rate)) / rate
    f0, f1 = (3400.0, 300.0) if down else (300.0, 3400.0)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    amp = 32767 * 10 ** (level_dbfs / 20) * np.sqrt(2)
    return np.rint(amp * np.sin(phase)).astype(np.int16)


async def test_push_source_to_pull_iterator_round_trip(make_engine) -> None:
    """A known numpy signal pushed at 16 kHz comes out of the receiver's remote_audio at
    16 kHz: found by cross-correlation, level within 2 dB."""
    push = PushAudioSource()
    alice, ra = await make_engine("alice", audio_source=push)
    bob, rb = await make_engine("bob")
    got = Collector(bob.remote_audio("alice", sample_rate=16000, channels=1))
    await alice.call("bob", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await ra.wait_for("onCallBegin")
    await rb.wait_for("onCallBegin")
    while not got.frames:  # media flows (silence while nothing queued)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    # silence: nothing was queued yet. Opus with in-band FEC on (SILK / hybrid mode) decodes
    # digital silence to a few samples of +-2 LSB, so "silent" is below -72 dBFS, not all zero
    quiet = got.since(0)[1]
    assert quiet.size and int(np.max(np.abs(quiet))) <= 8, np.max(np.abs(quiet))

    signal = probe_signal(1.0, 16000)
    stereo_44k = np.repeat(probe_signal(1.0, 44100, -26.0, down=True)[:, None], 2, axis=1)
    mark = len(got.frames)
    sent_at = time.monotonic()
    push.write(signal, 16000)  # mono 16 kHz ...
    push.write(stereo_44k, 44100)  # ... then stereo 44.1 kHz, 6 dB quieter
    assert push.queued_seconds == pytest.approx(2.0, abs=0.01)
    await push.wait_for_playout(timeout=5)
    assert push.queued_seconds == 0 and push.samples_played == push.samples_written
    await asyncio.sleep(0.6)  # the tail is still on its way
    first_at, received = got.since(mark)
    lag, peak = find(signal, received)
    assert peak > 0.8, peak
    one_way = first_at - sent_at + lag / 16000
    level = rms_dbfs(received[lag : lag + len(signal)])
    assert abs(level - rms_dbfs(signal)) < 2.0, (level, rms_dbfs(signal))
    lag2, peak2 = find(probe_signal(1.0, 16000, -26.0, down=True), received)
    assert peak2 > 0.8 and abs(lag2 - lag - 16000) < 160  # right after the first
    assert abs(rms_dbfs(received[lag2 : lag2 + 16000]) + 26) < 2.0
    second = rms_dbfs(received[lag2 : lag2 + 16000])
    print(
        f"\npush->pull: correlation {peak:.2f}, level {level:.1f} dBFS (sent "
        f"{rms_dbfs(signal):.1f}), second part {second:.1f} (sent -26.0), "
        f"one-way delay {one_way * 1000:.0f} ms"
    )
    assert 0.01 < one_way < 0.3, one_way

    push.write(signal, 16000)  # clear(): barge-in
    await asyncio.sleep(0.1)
    push.clear()
    assert push.queued_seconds == 0
    await push.wait_for_playout(timeout=0.1)  # nothing queued: returns at once

    await alice.hangup()
    await asyncio.wait_for(got.task, 5)  # the stream ends with the call
    assert got.stream.closed


async def test_echo_bot_level_and_delay(make_engine) -> None:
    """alice (tone at -20 dBFS) calls the echo bot: she hears herself at volume ~80, and a
    chirp she pushes comes back, found by cross-correlation, < 300 ms later."""
    push = PushAudioSource()
    alice, ra = await make_engine("alice", audio_source=push)
    echo, re_ = await make_engine("echo")
    bot = EchoBot(echo)
    back = Collector(alice.remote_audio("echo"))
    await alice.call("echo", CallMediaType.AUDIO)
    await ra.wait_for("onCallBegin")
    tone = ToneSource(440, -20)
    push.write(tone.read(RATE * 3))
    await asyncio.sleep(2.5)
    volumes = [p["volumeMap"]["echo"] for p in ra.of("onUserVoiceVolumeChanged")][-5:]
    assert all(abs(v - 80) <= 4 for v in volumes), volumes
    await push.wait_for_playout(timeout=5)
    await asyncio.sleep(0.5)  # the echo of the tone dies away

    delays = []
    chirp = probe_signal(0.25, RATE)
    for _ in range(3):
        mark = len(back.frames)
        sent_at = time.monotonic()
        push.write(chirp)  # played from the pump's next 20 ms tick
        await asyncio.sleep(0.8)
        first_at, received = back.since(mark)
        lag, peak = find(chirp, received)
        assert peak > 0.7, peak
        delays.append((first_at - sent_at) + lag / RATE)
        level = rms_dbfs(received[lag : lag + len(chirp)])
        assert abs(level + 20) < 2.0, level
    delay = float(np.median(delays))
    print(f"\necho: volume {volumes}, round-trip delay {[round(d * 1000) for d in delays]} ms")
    assert 0.02 < delay < 0.5, delays  # ~0.2 s idle; the figure itself belongs to bench/
    await alice.hangup()
    await re_.wait_for("onCallEnd")
    await bot.close()


async def test_record_bot_files_match_what_was_sent(make_engine, tmp_path: Path) -> None:
    alice, ra = await make_engine(
        "alice", audio_source=ToneSource(440, -20), video_source=TestPatternSource(160, 120, 15)
    )
    rec_engine, rr = await make_engine("recorder")
    said: list[str] = []
    bot = RecordBot(rec_engine, tmp_path, say=said.append)
    await alice.call("recorder", CallMediaType.VIDEO)
    await ra.wait_for("onCallBegin")
    started = time.monotonic()
    await asyncio.sleep(2.5)
    await alice.hangup()
    talked = time.monotonic() - started
    await rr.wait_for("onCallEnd")
    for _ in range(100):
        if bot.recordings:
            break
        await asyncio.sleep(0.05)
    files = bot.recordings[0]["alice"]
    assert files.errors == []
    with wave.open(str(files.audio)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        seconds = w.getnframes() / w.getframerate()
    assert talked - 0.6 < seconds < talked + 0.3, (seconds, talked)
    voiced = np.flatnonzero(np.abs(data) > 300)
    middle = data[voiced[0] + 4800 : voiced[-1] - 4800]
    assert abs(rms_dbfs(middle) + 20) < 1.0, rms_dbfs(middle)
    with av.open(str(files.video)) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert len(frames) == files.video_frames and len(frames) > 15
    counters = [TestPatternSource.decode_counter(f) for f in frames]
    assert counters == sorted(counters) and counters[-1] - counters[0] > 15
    assert any("recorded alice" in line for line in said)
    print(
        f"\nrecord: {seconds:.2f} s of audio for {talked:.2f} s of call, level "
        f"{rms_dbfs(middle):.2f} dBFS, {len(frames)} video frames"
    )


async def test_remote_video_yields_rgb_frames_and_taps_are_guarded(make_engine, error_log) -> None:
    alice, _ = await make_engine("alice", video_source=TestPatternSource(160, 120, 15))
    bob, rb = await make_engine("bob", video_source=TestPatternSource(160, 120, 15))
    calls = []

    def broken(samples: np.ndarray, rate: int) -> None:
        calls.append(rate)
        raise RuntimeError("a buggy bot")

    bob.add_audio_tap("alice", broken)
    video = bob.remote_video("alice")
    await alice.call("bob", CallMediaType.VIDEO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    images, counters = [], []
    async with video:
        async for image in video:
            images.append(image)
            counters.append(TestPatternSource.decode_counter(image))
            if len(images) == 10:
                break
    assert video.closed
    assert all(i.shape == (120, 160, 3) and i.dtype == np.uint8 for i in images)
    assert counters == sorted(counters) and counters[-1] > counters[0]
    # the broken tap ran on every frame, was logged once, and broke nothing
    assert len(calls) > 10 and set(calls) == {48000}
    assert [r.getMessage() for r in error_log.records].count(
        f"audio tap {broken!r} for alice failed"
    ) == 1
    bob.remove_audio_tap("alice", broken)
    n = len(calls)
    await asyncio.sleep(0.2)
    assert len(calls) == n
    audio = bob.remote_audio("alice")
    await alice.hangup()
    await rb.wait_for("onCallEnd")
    [x async for x in audio]  # iteration ends once the call is over (hangs otherwise)
    assert audio.closed
