"""Unit tests for media.volume: dBFS, the 0..100 volume formula, LevelMeter, RFC 6464 levels."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from aiortc.rtp import compute_audio_level_dbov

from media.volume import LevelMeter, audio_level_dbov, rms_dbfs, volume_from_dbfs


def sine(level_dbfs: float, n: int = 48000, freq: float = 440.0, rate: int = 48000) -> np.ndarray:
    amp = min(32767.0, 32767.0 * 10 ** (level_dbfs / 20) * math.sqrt(2))
    t = np.arange(n) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize(
    ("level", "volume"),
    [(-math.inf, 0), (-120.0, 0), (-60.0, 0), (-59.8, 0), (-59.7, 1), (-50.0, 20), (-40.0, 40),
     (-30.0, 60), (-20.0, 80), (-15.2, 90), (-10.0, 100), (-3.0, 100), (0.0, 100), (6.0, 100),
     (math.nan, 0), (math.inf, 100)],
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


@pytest.mark.parametrize("level", [-140.0, -127.4, -100.0, -80.0, -60.0, -45.5, -30.0, -20.0,
                                   -12.3, -6.0, -1.0, 0.0])
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
