"""Unit tests for media.volume: dBFS, the 0..100 volume formula, LevelMeter, RFC 6464 levels."""

from __future__ import annotations

import math

import aiortc.rtp
import av
import numpy as np
import pytest

from callkit.media.tracks import LocalAudio
from callkit.media.volume import (
    FrameLevel,
    LevelMeter,
    audio_level_dbov,
    dbov_from_sums,
    install_audio_level_hook,
    rms_dbfs,
    sum_squares,
    volume_from_dbfs,
)
from callkit.media.volume import aiortc_compute_audio_level_dbov as compute_audio_level_dbov
from callkit.media.volume import compute_audio_level_dbov as our_compute_audio_level_dbov


def sine(level_dbfs: float, n: int = 48000, freq: float = 440.0, rate: int = 48000) -> np.ndarray:
    amp = min(32767.0, 32767.0 * 10 ** (level_dbfs / 20) * math.sqrt(2))
    t = np.arange(n) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize(
    ("level", "volume"),
    [
        (-math.inf, 0),
        (-120.0, 0),
        (-60.0, 0),
        (-59.8, 0),
        (-59.7, 1),
        (-50.0, 20),
        (-40.0, 40),
        (-30.0, 60),
        (-20.0, 80),
        (-15.2, 90),
        (-10.0, 100),
        (-3.0, 100),
        (0.0, 100),
        (6.0, 100),
        (math.nan, 0),
        (math.inf, 100),
    ],
)
def test_volume_formula(level: float, volume: int) -> None:
    assert volume_from_dbfs(level) == volume


def test_volume_is_an_int() -> None:
    assert type(volume_from_dbfs(-33.3)) is int


@pytest.mark.parametrize("level", [-60.0, -40.0, -20.0, -10.0, -3.5])
def test_rms_of_sine_matches_level(level: float) -> None:
    assert rms_dbfs(sine(level)) == pytest.approx(level, abs=0.1)


def test_rms_any_shape_and_silence() -> None:
    x = sine(-20.0)
    stereo = np.repeat(x[:, None], 2, axis=1)
    assert rms_dbfs(stereo) == pytest.approx(rms_dbfs(x))
    assert rms_dbfs(x.reshape(1, -1)) == pytest.approx(rms_dbfs(x))
    assert rms_dbfs(np.zeros(960, np.int16)) == -math.inf
    assert rms_dbfs(np.zeros(0, np.int16)) == -math.inf
    assert volume_from_dbfs(rms_dbfs(np.zeros(960, np.int16))) == 0


def test_rms_full_scale_square_is_0_dbfs() -> None:
    assert rms_dbfs(np.full(100, -32768, np.int16)) == pytest.approx(0.0, abs=1e-9)


def test_level_meter_windows() -> None:
    meter = LevelMeter()
    assert meter.take_volume() == 0  # nothing yet
    x = sine(-20.0)
    for frame in x.reshape(-1, 960):
        meter.add(frame)
    assert meter.take_volume() == 80
    assert meter.take_volume() == 0  # the window was reset
    # half the window silent -> -3 dB -> 2*(-23+60) = 74
    for frame in x.reshape(-1, 960):
        meter.add(frame)
    meter.add_silence(x.size)
    assert meter.take_dbfs() == pytest.approx(-20.0 - 10 * math.log10(2), abs=0.1)
    meter.add_silence(960)
    assert meter.take_volume() == 0
    meter.add(sine(-40.0, 4800))
    assert meter.peek_dbfs() == pytest.approx(-40.0, abs=0.1)
    assert meter.take_volume() == 40


def test_level_meter_large_values_are_exact() -> None:
    meter = LevelMeter()
    big = np.full(1 << 20, -32768, np.int16)
    for _ in range(4):
        meter.add(big)
    assert meter.take_dbfs() == pytest.approx(0.0, abs=1e-12)


def _mono_frame(samples: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize(
    "level", [-140.0, -127.4, -100.0, -80.0, -60.0, -45.5, -30.0, -20.0, -12.3, -6.0, -1.0, 0.0]
)
def test_audio_level_matches_aiortc_for_mono(level: float) -> None:
    rng = np.random.default_rng(int(-level * 10))
    samples = sine(level, 960)
    if level > -90:
        samples = samples + rng.integers(-3, 4, 960).astype(np.int16)
    frame = _mono_frame(samples)
    expected = -compute_audio_level_dbov(frame)
    assert audio_level_dbov(frame) == expected
    assert audio_level_dbov(samples) == expected


def test_audio_level_matches_aiortc_for_random_mono_frames() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        scale = 10 ** rng.uniform(0, 4.5)
        samples = np.clip(rng.normal(0, scale, 960), -32768, 32767).astype(np.int16)
        frame = _mono_frame(samples)
        assert audio_level_dbov(samples) == -compute_audio_level_dbov(frame)


def test_audio_level_silence_and_empty() -> None:
    assert audio_level_dbov(np.zeros(960, np.int16)) == 127
    assert audio_level_dbov(np.zeros(0, np.int16)) == 127
    assert -compute_audio_level_dbov(_mono_frame(np.zeros(960, np.int16))) == 127


def test_audio_level_stereo_is_correct_where_aiortc_is_3db_off() -> None:
    mono = sine(-20.0, 960)
    stereo = np.repeat(mono[:, None], 2, axis=1)  # (960, 2): same signal in both channels
    frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48000
    ours = audio_level_dbov(frame)
    aiortc_level = -compute_audio_level_dbov(frame)
    assert ours == audio_level_dbov(mono) == 20  # same loudness as the mono signal
    assert ours - aiortc_level == 3  # aiortc counts both channels but divides by frame.samples
    # planar stereo measures the same
    planar = av.AudioFrame.from_ndarray(stereo.T.copy(), format="s16p", layout="stereo")
    assert audio_level_dbov(planar) == ours


# --------------------------------------------------------------------------- RTP header hook


def _stereo_frame(mono: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48000
    return frame


def test_saved_original_is_aiortcs_python_loop() -> None:
    assert compute_audio_level_dbov.__module__ == "aiortc.rtp"
    assert compute_audio_level_dbov is not our_compute_audio_level_dbov


def test_hook_installs_once_and_aiortc_uses_ours() -> None:
    install_audio_level_hook()
    install_audio_level_hook()
    assert aiortc.rtp.compute_audio_level_dbov is our_compute_audio_level_dbov
    LocalAudio()  # creating a LocalAudio installs it too (idempotent)
    assert aiortc.rtp.compute_audio_level_dbov is our_compute_audio_level_dbov
    # what aiortc's sender does per frame: rtp.compute_audio_level_dbov(frame), negated later
    frame = _stereo_frame(sine(-30.0, 960))
    assert -aiortc.rtp.compute_audio_level_dbov(frame) == 30


def test_replacement_trusts_an_attached_level_and_ignores_other_opaques() -> None:
    frame = _stereo_frame(sine(-20.0, 960))
    frame.opaque = FrameLevel(42)  # deliberately not the samples' level
    assert our_compute_audio_level_dbov(frame) == -42
    frame.opaque = 42  # a plain int (someone else's opaque) is not ours: compute
    assert our_compute_audio_level_dbov(frame) == -20
    frame.opaque = {"level": 1}
    assert our_compute_audio_level_dbov(frame) == -20


@pytest.mark.parametrize("level", [-127.0, -60.0, -30.0, -12.3, -1.0])
def test_replacement_fallback_matches_aiortc_for_mono_and_fixes_stereo(level: float) -> None:
    mono = sine(level, 960)
    mframe = _mono_frame(mono)
    assert our_compute_audio_level_dbov(mframe) == compute_audio_level_dbov(mframe)
    sframe = _stereo_frame(mono)
    assert our_compute_audio_level_dbov(sframe) == our_compute_audio_level_dbov(mframe)


def test_sum_squares_feeds_meter_and_level_in_one_pass() -> None:
    samples = sine(-20.0, 960)
    sum_sq, n = sum_squares(samples)
    meter = LevelMeter()
    meter.add_sum_squares(sum_sq, n)
    assert meter.take_volume() == 80
    assert dbov_from_sums(sum_sq, n) == audio_level_dbov(samples) == 20
    assert dbov_from_sums(0, 960) == dbov_from_sums(0, 0) == 127


async def test_local_audio_frames_carry_their_level() -> None:
    from callkit.media import ToneSource

    tone = ToneSource(440, level_dbfs=-20)
    local = LocalAudio(tone)  # stereo frames by default
    track = local.subscribe()
    try:
        for expected in (20, 35, 127):
            if expected == 127:
                local.muted = True
            else:
                tone.level_dbfs = -expected
            for _ in range(4):  # drain queued frames made before the change
                frame = await track.recv()
            assert type(frame.opaque) is FrameLevel
            assert int(frame.opaque) == expected == local.last_level_dbov
            # the attached level is the frame's true (stereo-correct) level
            assert audio_level_dbov(frame) == expected
            assert -aiortc.rtp.compute_audio_level_dbov(frame) == expected
    finally:
        await local.stop()
