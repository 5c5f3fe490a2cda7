"""Audio level maths: dBFS, TUICallKit voice volume (0..100) and RFC 6464 levels.

All per-sample work is numpy-vectorised; nothing here loops over samples in Python.

Conventions:

- dBFS is ``20*log10(RMS / 32768)`` over int16 samples (DESIGN.md section 4). Digital
  silence and empty input give ``-inf``.
- Volume is ``clamp(round(2 * (dBFS + 60)), 0, 100)``: -60 dBFS or quieter -> 0,
  -20 dBFS -> 80, -10 dBFS and louder -> 100, silence -> 0.
- The RFC 6464 level is ``0..127`` (0 = loudest, 127 = silence), the value carried in the
  ssrc-audio-level RTP header extension. It follows RFC 6465 appendix A like aiortc
  (reference 32767, RMS over *all* samples of the frame, channels included).

The RTP header's level: aiortc's ``RTCRtpSender`` calls ``aiortc.rtp.compute_audio_level_dbov``
(looked up on the module at call time) for every audio frame it sends, a pure-Python loop
over the samples that costs about as much as the Opus encode and reads stereo frames 3 dB
too loud. :func:`install_audio_level_hook` replaces it, once, with
:func:`compute_audio_level_dbov`: it returns the level :class:`media.tracks.LocalAudio`
already computed and attached to the frame (``frame.opaque = FrameLevel(level)``), and
computes it with numpy for frames without one. The original stays available as
:data:`aiortc_compute_audio_level_dbov`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from callkit.media import _compat

__all__ = [
    "FULL_SCALE",
    "FrameLevel",
    "LevelMeter",
    "aiortc_compute_audio_level_dbov",
    "audio_level_dbov",
    "compute_audio_level_dbov",
    "dbov_from_sums",
    "install_audio_level_hook",
    "rms_dbfs",
    "sum_squares",
    "volume_from_dbfs",
]

FULL_SCALE = 32768.0
"""Reference for dBFS: the magnitude of the most negative int16 sample."""

_DBOV_REF_SQ = 32767 * 32767  # RFC 6465 appendix A (and aiortc) use 32767
_DBOV_MIN = 127

# Chunk whose sum of squares is exact in float64: 2**22 samples * 2**30 < 2**53.
_CHUNK = 1 << 22


def sum_squares(samples: Any) -> tuple[int, int]:
    """Exact sum of squares (as int) and number of samples of an int16-like array.

    Feed the result to :meth:`LevelMeter.add_sum_squares` and :func:`dbov_from_sums` to
    meter a frame and get its RFC 6464 level from one pass over the samples.
    """
    if type(samples) is np.ndarray and samples.dtype == np.int16 and samples.size < _CHUNK:
        # the per-frame case (a decoded or sent frame): one conversion, one dot
        flat = samples.reshape(-1).astype(np.float64)
        return int(flat @ flat), flat.size
    x = np.asarray(samples).reshape(-1)
    n = int(x.size)
    if n == 0:
        return 0, 0
    if x.dtype.kind == "f":
        # float input in int16 units (e.g. already converted); not exact, but vectorised
        xf = x.astype(np.float64, copy=False)
        return round(float(np.dot(xf, xf))), n
    # float64 dot (BLAS) is about twice as fast as an int64 one and exact per chunk
    total = 0
    for start in range(0, n, _CHUNK):
        part = x[start : start + _CHUNK].astype(np.float64)
        total += int(np.dot(part, part))
    return total, n


def _dbfs_from_sums(sum_sq: float, count: int) -> float:
    if count <= 0 or sum_sq <= 0:
        return -math.inf
    return 20.0 * math.log10(math.sqrt(sum_sq / count) / FULL_SCALE)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS of int16 samples of any shape (all channels together).

    Returns ``-inf`` for digital silence or an empty array.
    """
    sum_sq, n = sum_squares(samples)
    return _dbfs_from_sums(sum_sq, n)


def volume_from_dbfs(level: float) -> int:
    """Map a dBFS level to TUICallKit's 0..100 volume: ``clamp(round(2*(level+60)), 0, 100)``.

    ``-inf`` (silence) and NaN give 0.
    """
    if math.isnan(level) or level <= -60.0:
        return 0
    if level >= -10.0:
        return 100
    return max(0, min(100, round(2.0 * (level + 60.0))))


class LevelMeter:
    """Accumulates int16 audio and reports the volume of each window.

    ``add`` the samples of every frame (any shape; all channels count), ``add_silence`` for
    periods of digital silence (muted), and ``take_volume`` once per reporting interval: it
    returns the volume of everything added since the previous take and starts a new window.
    A window with no samples gives 0.
    """

    __slots__ = ("_count", "_sum_sq")

    def __init__(self) -> None:
        self._sum_sq = 0
        self._count = 0

    def add(self, samples: np.ndarray) -> None:
        """Add a frame of int16 samples (any shape) to the current window."""
        sum_sq, n = sum_squares(samples)
        self._sum_sq += sum_sq
        self._count += n

    def add_sum_squares(self, sum_sq: int, n: int) -> None:
        """Add a frame already reduced by :func:`sum_squares` to the current window."""
        self._sum_sq += sum_sq
        self._count += n

    def add_silence(self, n: int) -> None:
        """Add ``n`` samples of digital silence to the current window."""
        if n > 0:
            self._count += int(n)

    @property
    def sample_count(self) -> int:
        """Samples in the current window."""
        return self._count

    def peek_dbfs(self) -> float:
        """dBFS of the current window without resetting it (``-inf`` if empty or silent)."""
        return _dbfs_from_sums(self._sum_sq, self._count)

    def take_dbfs(self) -> float:
        """dBFS of the current window, then reset it."""
        level = self.peek_dbfs()
        self.reset()
        return level

    def take_volume(self) -> int:
        """Volume (0..100) of the current window, then reset it; no samples -> 0."""
        return volume_from_dbfs(self.take_dbfs())

    def reset(self) -> None:
        """Start a new, empty window."""
        self._sum_sq = 0
        self._count = 0


def dbov_from_sums(sum_sq: int, n: int) -> int:
    """RFC 6464 level (0 loudest .. 127 silence) from :func:`sum_squares` of one frame."""
    if n <= 0 or sum_sq <= 0:
        return _DBOV_MIN
    # Same float operations as aiortc so mono results match exactly (including rounding).
    rms = math.sqrt(sum_sq / (n * _DBOV_REF_SQ))
    db = 20 * math.log10(rms)
    db = min(max(db, -_DBOV_MIN), 0)
    return -round(db)


def audio_level_dbov(samples: Any) -> int:
    """RFC 6464 audio level of one frame: 0 (loudest, 0 dBov) .. 127 (-127 dBov or silence).

    ``samples`` is an int16 array of any shape, or an ``av.AudioFrame`` in an int16
    format (s16 / s16p). The RMS is taken over all samples, so interleaved stereo is measured
    correctly. For mono frames the result equals ``-aiortc.rtp.compute_audio_level_dbov(frame)``
    (aiortc returns the negated level and negates it again when writing the header); for
    stereo aiortc divides the sum over both channels by the per-channel sample count and
    reads about 3 dB too loud.
    """
    if not isinstance(samples, np.ndarray) and hasattr(samples, "to_ndarray"):
        samples = samples.to_ndarray()
    return dbov_from_sums(*sum_squares(samples))


class FrameLevel(int):
    """An RFC 6464 level (0..127) attached to an ``av.AudioFrame`` as ``frame.opaque``.

    :func:`compute_audio_level_dbov` trusts a frame's ``FrameLevel`` instead of reading its
    samples; any other ``opaque`` value is ignored.
    """

    __slots__ = ()


_MARK = "_callkit_audio_level"

#: aiortc's own ``compute_audio_level_dbov`` (pure-Python loop), as found at import.
aiortc_compute_audio_level_dbov = _compat.AIORTC_COMPUTE_AUDIO_LEVEL_DBOV


def compute_audio_level_dbov(frame: Any) -> int:
    """Drop-in replacement for ``aiortc.rtp.compute_audio_level_dbov``.

    Returns the level in aiortc's convention, ``-127..0`` (aiortc negates it again when it
    writes the header): the frame's attached :class:`FrameLevel` if it has one, else the
    numpy computation over all of the frame's samples (correct for stereo too).
    """
    level = getattr(frame, "opaque", None)
    if type(level) is FrameLevel:
        return -int(level)
    return -audio_level_dbov(frame)


setattr(compute_audio_level_dbov, _MARK, True)
compute_audio_level_dbov.original = aiortc_compute_audio_level_dbov  # type: ignore[attr-defined]


def install_audio_level_hook() -> None:
    """Make aiortc use :func:`compute_audio_level_dbov` for every audio frame it sends.

    Idempotent; :class:`media.tracks.LocalAudio` calls it when it is created. aiortc's
    ``RTCRtpSender`` looks the function up on ``aiortc.rtp`` for each frame, so replacing the
    module attribute is enough.
    """
    _compat.patch_audio_level(compute_audio_level_dbov)
