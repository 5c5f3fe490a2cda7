"""Unit tests for media.sources: tone level and continuity, silence, the test pattern."""

from __future__ import annotations

import itertools
import math

import av
import numpy as np
import pytest

from callkit.media.sources import SilenceSource, TestPatternSource, ToneSource
from callkit.media.volume import rms_dbfs


@pytest.mark.parametrize("level", [-60.0, -40.0, -20.0, -10.0, -6.0])
def test_tone_rms_level(level: float) -> None:
    src = ToneSource(440.0, level_dbfs=level)
    x = src.read(48000)
    assert x.shape == (48000, 1) and x.dtype == np.int16
    assert rms_dbfs(x) == pytest.approx(level, abs=0.1)


def test_tone_loud_levels_clip_amplitude() -> None:
    x = ToneSource(level_dbfs=0.0).read(4800)
    assert int(np.abs(x.astype(np.int32)).max()) == 32767
    assert rms_dbfs(x) == pytest.approx(-3.01, abs=0.1)


def _max_step(x: np.ndarray) -> int:
    return int(np.abs(np.diff(x.astype(np.int64), axis=0)).max())


@pytest.mark.parametrize("chunk", [1, 7, 160, 441, 960])
def test_tone_is_phase_continuous_across_reads(chunk: int) -> None:
    whole = ToneSource(1000.0, -6.0).read(9600)
    src = ToneSource(1000.0, -6.0)
    parts = np.concatenate([src.read(chunk) for _ in range(9600 // chunk)])
    np.testing.assert_allclose(parts[:, 0], whole[: parts.shape[0], 0], atol=1)
    # the largest sample-to-sample step is that of the sine itself: no jump at read boundaries
    amp = 32767 * 10 ** (-6 / 20) * math.sqrt(2)
    assert _max_step(parts) <= amp * 2 * math.pi * 1000 / 48000 + 2


def test_tone_level_change_mid_stream_is_continuous() -> None:
    src = ToneSource(440.0, -20.0)
    a = src.read(960)
    src.level_dbfs = -40.0
    b = src.read(48000)
    assert rms_dbfs(b) == pytest.approx(-40.0, abs=0.1)
    assert src.level_dbfs == -40.0
    # the first new sample follows the sine's phase (scaled), not a restart at zero phase
    step = 2 * math.pi * 440 / 48000
    expected = 32767 * 10 ** (-40 / 20) * math.sqrt(2) * math.sin(960 * step)
    assert abs(int(b[0, 0]) - expected) <= 1
    assert a.shape == (960, 1)


def test_tone_stereo_and_other_rates() -> None:
    src = ToneSource(300.0, -20.0, sample_rate=44100, channels=2)
    x = src.read(4410)
    assert x.shape == (4410, 2)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    assert rms_dbfs(x) == pytest.approx(-20.0, abs=0.1)


def test_tone_read_zero() -> None:
    assert ToneSource().read(0).shape == (0, 1)


def test_silence() -> None:
    src = SilenceSource(channels=2)
    x = src.read(960)
    assert x.shape == (960, 2) and x.dtype == np.int16 and not x.any()
    assert rms_dbfs(x) == -math.inf
    src.close()
    assert src.closed


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"freq": 0}, "0"),
        ({"freq": -5.0}, "-5.0"),
        ({"freq": 24000}, "24000"),
        ({"freq": "440"}, "'440'"),
        ({"level_dbfs": float("nan")}, "nan"),
        ({"level_dbfs": 40.0}, "40.0"),
        ({"sample_rate": 0}, "0"),
        ({"sample_rate": 48000.5}, "48000.5"),
        ({"channels": 0}, "0"),
        ({"channels": True}, "True"),
    ],
)
def test_tone_bad_args(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        ToneSource(**kwargs)


def test_tone_bad_level_assignment_keeps_old_level() -> None:
    src = ToneSource(level_dbfs=-20.0)
    with pytest.raises(ValueError, match="nan"):
        src.level_dbfs = float("nan")
    assert src.level_dbfs == -20.0


def test_pattern_frames_have_size_and_change() -> None:
    src = TestPatternSource(320, 240, 15)
    frames = [src.read() for _ in range(5)]
    for f in frames:
        assert isinstance(f, av.VideoFrame)
        assert (f.width, f.height) == (320, 240)
        assert f.format.name == "yuv420p"  # the encoders' format: no conversion needed
    arrays = [f.to_ndarray() for f in frames]
    for a, b in itertools.pairwise(arrays):
        assert not np.array_equal(a, b)
    assert [TestPatternSource.decode_counter(f) for f in frames] == [0, 1, 2, 3, 4]
    assert src.frames_read == 5


def test_pattern_bars_move() -> None:
    src = TestPatternSource(320, 240, 15)
    a, b = src.pattern(0), src.pattern(15)  # one second apart: a quarter of the width
    assert a.shape == (360, 320) and a.dtype == np.uint8
    row = 200  # below the counter strip
    np.testing.assert_array_equal(np.roll(a[row], 80, axis=0), b[row])
    # chroma moves with luma (an even shift keeps half-resolution chroma aligned)
    ua, ub = (x[240:].reshape(2, 120, 160)[0] for x in (a, b))
    np.testing.assert_array_equal(np.roll(ua[100], 40), ub[100])


def test_pattern_read_equals_pattern_and_looks_like_colour_bars() -> None:
    src = TestPatternSource(320, 240, 15)
    src.frames_read = 7
    frame = src.read()
    np.testing.assert_array_equal(frame.to_ndarray(), src.pattern(7))
    rgb = TestPatternSource(320, 240, 15).read().to_ndarray(format="rgb24")
    row = rgb[200]  # eight bars of 40 px: white, yellow, cyan, green, magenta, red, blue, black
    centres = row[20::40].astype(int)
    expected = np.array(
        [
            [191, 191, 191],
            [191, 191, 0],
            [0, 191, 191],
            [0, 191, 0],
            [191, 0, 191],
            [191, 0, 0],
            [0, 0, 191],
            [0, 0, 0],
        ]
    )
    assert np.abs(centres - expected).max() <= 6


def test_pattern_counter_survives_conversions() -> None:
    src = TestPatternSource(160, 120, 30)
    src.frames_read = 1234
    frame = src.read()
    assert TestPatternSource.decode_counter(frame) == 1234
    rgb = frame.reformat(format="rgb24")
    assert TestPatternSource.decode_counter(rgb) == 1234
    assert TestPatternSource.decode_counter(rgb.to_ndarray()) == 1234
    src.frames_read = (1 << 16) + 5  # wraps modulo 2**16
    assert TestPatternSource.decode_counter(src.read()) == 5


def test_pattern_tiny_and_odd_aligned_sizes() -> None:
    for w, h in [(18, 16), (34, 22), (322, 242)]:
        src = TestPatternSource(w, h, 10)
        src.frames_read = 99
        frame = src.read()
        assert (frame.width, frame.height) == (w, h)
        np.testing.assert_array_equal(frame.to_ndarray(), src.pattern(99))


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"width": 0}, "0"),
        ({"width": 321}, "321"),
        ({"height": -2}, "-2"),
        ({"height": 240.0}, "240.0"),
        ({"fps": 0}, "0"),
        ({"fps": 1000}, "1000"),
        ({"fps": "15"}, "'15'"),
        ({"width": 100000}, "100000"),
        ({"width": 16}, "16"),
    ],
)
def test_pattern_bad_args(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        TestPatternSource(**kwargs)


class _DirectTone(ToneSource):
    MAX_TABLE = 0  # never a table: the sine computed on every read


@pytest.mark.parametrize(("freq", "rate", "channels"), [(440.0, 48000, 1), (1000.0, 44100, 2)])
def test_tone_table_matches_the_computed_sine(freq: float, rate: int, channels: int) -> None:
    """The precomputed period gives the computed sine's samples (±1 LSB of rounding), also
    across level and frequency changes and reads longer than the table."""
    fast, direct = ToneSource(freq, -20.0, rate, channels), _DirectTone(freq, -20.0, rate, channels)
    chunks = [960, 7, 960, 30000, 441]
    for i in range(40):
        if i == 10:
            fast.level_dbfs = direct.level_dbfs = -35.0
        if i == 20:
            fast.freq = direct.freq = 550.0
        n = chunks[i % len(chunks)]
        a, b = fast.read(n), direct.read(n)
        assert a.shape == b.shape == (n, channels)
        assert int(np.abs(a.astype(np.int32) - b).max()) <= 1
    assert fast._table is not None and direct._table is None
    odd = ToneSource(440.3, -20.0)
    odd.read(960)
    assert odd._table is None  # a period longer than MAX_TABLE: computed
