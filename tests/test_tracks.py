"""Tests for media.tracks: pacing, fan-out, and a real aiortc loopback on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callkit.media.sources import (
    AudioSource,
    SilenceSource,
    TestPatternSource,
    ToneSource,
    VideoSource,
)
from callkit.media.tracks import LocalAudio, LocalVideo, RemoteAudio, RemoteVideo
from callkit.media.volume import rms_dbfs


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE may only gather 127.0.0.1 (aioice calls get_host_addresses by name)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda *a, **k: ["127.0.0.1"])


# -- pacing and fan-out without peer connections ------------------------------------------


async def _count_frames(track: MediaStreamTrack, seconds: float) -> list[av.AudioFrame]:
    loop = asyncio.get_running_loop()
    frames = []
    end = loop.time() + seconds
    while True:
        try:
            frame = await asyncio.wait_for(track.recv(), max(0.001, end - loop.time()))
        except asyncio.TimeoutError:
            return frames
        frames.append(frame)


async def test_audio_pacing_50_frames_per_second() -> None:
    local = LocalAudio(ToneSource(level_dbfs=-20.0))
    track = local.subscribe()
    assert track.kind == "audio"
    frames = await _count_frames(track, 1.0)
    await local.stop()
    assert 47 <= len(frames) <= 53
    f = frames[0]
    assert (f.format.name, f.layout.name, f.sample_rate, f.samples) == ("s16", "stereo", 48000, 960)
    left, right = f.to_ndarray().reshape(-1, 2).T
    np.testing.assert_array_equal(left, right)
    assert f.time_base == f.time_base.__class__(1, 48000)
    pts = [fr.pts for fr in frames]
    assert all(b - a == 960 for a, b in itertools.pairwise(pts))
    assert local.take_volume() == 80
    assert local.last_level_dbov == 20


async def test_pump_skips_ahead_after_a_stall_instead_of_bursting() -> None:
    local = LocalAudio(SilenceSource())
    track = local.subscribe()
    await track.recv()
    await asyncio.sleep(0.05)
    time.sleep(0.25)
    await asyncio.sleep(0.005)
    burst = await _count_frames(track, 0.01)  # what the pump produced right after the stall
    await local.stop()
    assert local.frames_skipped >= 8
    pts = [f.pts for f in burst]
    assert any(b - a > 960 for a, b in itertools.pairwise(pts))  # the skipped time shows in pts
    assert local.frames_sent <= 1 + 3 + 1 + 2 + 3  # recv'd, pre-stall, catch-up, slack


async def test_fanout_same_audio_to_every_subscriber_and_stop_ends_tracks() -> None:
    local = LocalAudio(ToneSource(level_dbfs=-30.0))
    t1, t2 = local.subscribe(), local.subscribe()
    assert local.running and local.subscriber_count == 2
    f1, f2 = await asyncio.gather(t1.recv(), t2.recv())
    assert f1 is not f2 and f1.pts == f2.pts
    np.testing.assert_array_equal(f1.to_ndarray(), f2.to_ndarray())
    pending = asyncio.ensure_future(t1.recv())
    await asyncio.sleep(0)
    await local.stop()
    with pytest.raises(MediaStreamError):
        await pending  # a waiting recv wakes up
    with pytest.raises(MediaStreamError):
        await t2.recv()
    assert not local.running and t1.readyState == "ended"


async def test_pump_runs_only_with_subscribers_or_explicit_start() -> None:
    local = LocalAudio(SilenceSource())
    assert not local.running
    track = local.subscribe()
    assert local.running
    local.unsubscribe(track)
    assert not local.running and track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
    local.start()
    assert local.running
    await asyncio.sleep(0.1)
    assert local.frames_sent >= 3
    t2 = local.subscribe()
    t2.stop()  # a track stopped by its consumer unsubscribes itself
    assert local.subscriber_count == 0 and local.running
    await local.stop()
    assert not local.running


async def test_local_audio_sources_share_one_timer_and_a_bad_one_stops_no_other() -> None:
    """Every LocalAudio of a loop is paced by one task (not one per engine); a source whose
    frame production raises is logged and the others keep their 50 frames per second."""
    from callkit.media.tracks import _AudioClock

    def tasks() -> int:
        return sum(
            1 for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_AudioClock._run"
        )

    before = tasks()
    sources = [LocalAudio(ToneSource(level_dbfs=-30.0)) for _ in range(6)]
    tracks = [s.subscribe() for s in sources]
    assert all(s.running for s in sources) and tasks() == before + 1
    clock = _AudioClock.of(0.02)
    assert all(s in clock for s in sources)
    sources[0]._tick = lambda deadline: 1 / 0  # type: ignore[method-assign]
    counts = await asyncio.gather(*(_count_frames(t, 0.5) for t in tracks[1:]))
    assert all(20 <= len(c) <= 30 for c in counts), [len(c) for c in counts]
    for s in sources:
        await s.stop()
    assert not any(s.running for s in sources) and not any(s in clock for s in sources)
    await asyncio.sleep(0)
    assert tasks() == before  # the clock stops with its last source


async def test_mute_source_switch_and_conversion() -> None:
    local = LocalAudio(ToneSource(level_dbfs=-20.0))
    track = local.subscribe()
    local.muted = True
    frame = await track.recv()
    assert not frame.to_ndarray().any() and local.last_level_dbov == 127
    await asyncio.sleep(0.06)
    assert local.take_volume() == 0
    local.muted = False
    # a 44.1 kHz stereo source is resampled to 48 kHz mono at the same level
    local.set_source(ToneSource(1000.0, -40.0, sample_rate=44100, channels=2))
    frames = await _count_frames(track, 0.3)
    await local.stop()
    data = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in frames[3:]])
    assert all(f.samples == 960 for f in frames)
    assert rms_dbfs(data) == pytest.approx(-40.0, abs=0.3)
    spectrum = np.abs(np.fft.rfft(data[:9600]))
    assert np.argmax(spectrum) * 48000 / 9600 == pytest.approx(1000.0, abs=5)


async def test_mono_output_option() -> None:
    local = LocalAudio(ToneSource(level_dbfs=-20.0), channels=1)
    track = local.subscribe()
    frame = await track.recv()
    await local.stop()
    assert (frame.layout.name, frame.samples, frame.to_ndarray().shape) == ("mono", 960, (1, 960))
    with pytest.raises(ValueError, match="3"):
        LocalAudio(channels=3)
    with pytest.raises(ValueError, match="7"):
        LocalAudio(frame_ms=7)


async def test_failing_source_falls_back_to_silence() -> None:
    class Broken(AudioSource):
        def read(self, n: int) -> np.ndarray:
            raise OSError("device unplugged")

    local = LocalAudio(Broken())
    track = local.subscribe()
    frame = await track.recv()
    await local.stop()
    assert not frame.to_ndarray().any() and local.source is None


async def test_video_pacing_and_disable() -> None:
    video = LocalVideo(TestPatternSource(160, 120, fps=25))
    track = video.subscribe()
    assert track.kind == "video"
    frames = await _count_frames(track, 0.4)
    assert 8 <= len(frames) <= 12
    assert frames[1].pts - frames[0].pts == pytest.approx(90000 / 25, abs=1)
    assert frames[0].time_base == frames[0].time_base.__class__(1, 90000)
    video.enabled = False
    await asyncio.sleep(0.05)
    sent = video.frames_sent
    assert len(await _count_frames(track, 0.3)) <= 2  # at most what was queued
    assert video.frames_sent == sent
    await video.stop()


async def test_video_fanout_gives_each_subscriber_its_own_yuv420p_frame() -> None:
    class RgbSource(VideoSource):
        def read(self) -> av.VideoFrame:
            arr = np.zeros((self.height, self.width, 3), np.uint8)
            arr[:, : self.width // 2] = (200, 40, 40)
            return av.VideoFrame.from_ndarray(arr, format="rgb24")

    video = LocalVideo(RgbSource(64, 48, fps=30))
    t1, t2 = video.subscribe(), video.subscribe()
    f1, f2 = await asyncio.gather(t1.recv(), t2.recv())
    await video.stop()
    assert f1 is not f2 and f1.pts == f2.pts
    assert f1.format.name == f2.format.name == "yuv420p"  # converted once, off the loop
    np.testing.assert_array_equal(f1.to_ndarray(), f2.to_ndarray())
    rgb = f2.to_ndarray(format="rgb24")
    assert abs(int(rgb[10, 5, 0]) - 200) < 8 and abs(int(rgb[10, 50, 0])) < 8
    with pytest.raises(MediaStreamError):
        await t1.recv()


class _FakeTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: list) -> None:
        super().__init__()
        self._frames = list(frames)

    async def recv(self):  # type: ignore[override]
        await asyncio.sleep(0)
        if not self._frames:
            self.stop()
            raise MediaStreamError
        return self._frames.pop(0)


async def test_remote_audio_meters_any_sample_format_and_calls_hook() -> None:
    mono = ToneSource(level_dbfs=-20.0).read(960)[:, 0]
    stereo = np.stack([mono, mono], axis=1)
    packed = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
    planar = av.AudioFrame.from_ndarray(stereo.T.copy(), format="s16p", layout="stereo")
    floats = np.ascontiguousarray(stereo.T / 32767.0, np.float32)
    fltp = av.AudioFrame.from_ndarray(floats, format="fltp", layout="stereo")
    frames = [packed, planar, fltp]
    for f in frames:
        f.sample_rate = 48000
    got: list[tuple[tuple[int, ...], int]] = []

    def hook(samples: np.ndarray, rate: int) -> None:
        got.append((samples.shape, rate))
        np.testing.assert_allclose(samples[:, 1], mono, atol=1)
        if len(got) == 2:
            raise RuntimeError("a broken hook is logged, not raised")

    remote = RemoteAudio(_FakeTrack(frames), on_frame=hook)
    remote.start()
    for _ in range(100):
        if remote.ended:
            break
        await asyncio.sleep(0.001)
    await remote.stop()
    assert remote.ended and remote.frames_received == 3
    assert got == [((960, 2), 48000)] * 3
    assert remote.take_volume() == 80
    assert remote.take_volume() == 0


async def test_remote_video_counts_and_records_size() -> None:
    src = TestPatternSource(64, 48, 10)
    track = _FakeTrack([src.read() for _ in range(4)])
    track.kind = "video"
    seen: list[int] = []
    remote = RemoteVideo(track, on_frame=lambda f: seen.append(TestPatternSource.decode_counter(f)))
    remote.start()
    for _ in range(100):
        if remote.ended:
            break
        await asyncio.sleep(0.001)
    await remote.stop()
    assert (remote.frames_received, remote.last_size, seen) == (4, (64, 48), [0, 1, 2, 3])
    assert remote.last_frame_at is not None


# -- real loopback through two aiortc peer connections -----------------------------------


@pytest.fixture
async def pc_pair(
    loopback_only: None,
) -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    cfg = RTCConfiguration(iceServers=[])
    pc1, pc2 = RTCPeerConnection(cfg), RTCPeerConnection(cfg)
    try:
        yield pc1, pc2
    finally:
        await pc1.close()
        await pc2.close()


async def _connect(pc1: RTCPeerConnection, pc2: RTCPeerConnection) -> None:
    await pc1.setLocalDescription(await pc1.createOffer())
    await pc2.setRemoteDescription(pc1.localDescription)
    await pc2.setLocalDescription(await pc2.createAnswer())
    await pc1.setRemoteDescription(pc2.localDescription)
    for sdp in (pc1.localDescription.sdp, pc2.localDescription.sdp):
        cands = [line for line in sdp.splitlines() if line.startswith("a=candidate")]
        assert cands and all(" 127.0.0.1 " in c for c in cands), cands


async def _window(
    remote: RemoteAudio, local: LocalAudio | None, settle: float, window: float
) -> tuple[int, int | None]:
    await asyncio.sleep(settle)
    remote.take_volume()
    if local is not None:
        local.take_volume()
    await asyncio.sleep(window)
    return remote.take_volume(), (local.take_volume() if local is not None else None)


@pytest.mark.loopback
async def test_audio_loopback_volume_mute_and_switch(pc_pair) -> None:
    pc1, pc2 = pc_pair
    local = LocalAudio(ToneSource(440.0, level_dbfs=-20.0))
    track = local.subscribe()
    pc1.addTrack(track)
    remotes: list[RemoteAudio] = []

    @pc2.on("track")
    def on_track(t: MediaStreamTrack) -> None:
        r = RemoteAudio(t)
        r.start()
        remotes.append(r)

    await _connect(pc1, pc2)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (remotes and remotes[0].frames_received) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert remotes and remotes[0].frames_received, "no audio arrived"
        remote = remotes[0]

        remote_vol, local_vol = await _window(remote, local, 0.3, 1.0)
        assert local_vol == 80
        assert abs(remote_vol - 80) <= 4, remote_vol
        assert remote.sample_rate == 48000 and remote.channels == 2
        assert loop.time() - remote.last_frame_at < 0.5

        local.muted = True
        remote_vol, local_vol = await _window(remote, local, 0.3, 0.5)
        assert (remote_vol, local_vol) == (0, 0)

        local.muted = False
        local.set_source(ToneSource(440.0, level_dbfs=-40.0))
        remote_vol, local_vol = await _window(remote, local, 0.3, 0.7)
        assert local_vol == 40
        assert abs(remote_vol - 40) <= 4, remote_vol
    finally:
        local.unsubscribe(track)
        await local.stop()
        for r in remotes:
            await r.stop()


@pytest.mark.loopback
async def test_video_loopback_and_disable(pc_pair) -> None:
    pc1, pc2 = pc_pair
    video = LocalVideo(TestPatternSource(320, 240, fps=15))
    pc1.addTrack(video.subscribe())
    remotes: list[RemoteVideo] = []
    counters: list[int] = []

    @pc2.on("track")
    def on_track(t: MediaStreamTrack) -> None:
        r = RemoteVideo(t, on_frame=lambda f: counters.append(TestPatternSource.decode_counter(f)))
        r.start()
        remotes.append(r)

    await _connect(pc1, pc2)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (remotes and remotes[0].frames_received >= 5) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert remotes, "no video track"
        remote = remotes[0]
        n0 = remote.frames_received
        await asyncio.sleep(0.6)
        assert remote.frames_received > n0 + 4
        assert remote.last_size == (320, 240)
        assert counters == sorted(counters) and len(set(counters)) == len(counters)

        video.enabled = False
        await asyncio.sleep(0.4)  # let frames in flight arrive
        n1, sent = remote.frames_received, video.frames_sent
        await asyncio.sleep(0.6)
        assert remote.frames_received == n1 and video.frames_sent == sent

        video.enabled = True
        await asyncio.sleep(0.6)
        assert remote.frames_received > n1
    finally:
        await video.stop()
        for r in remotes:
            await r.stop()
