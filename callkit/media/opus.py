"""Opus encoding and decoding (packet-loss concealment, in-band FEC) through libopus itself.

aiortc decodes Opus with PyAV's ``libopus`` decoder (FFmpeg's ``libopusdec``). FFmpeg gives
that decoder no way to conceal a lost packet: an empty packet means "end of stream" to
``avcodec_send_packet``, and ``libopusdec`` never calls ``opus_decode`` with ``decode_fec=1``
(its only option is ``apply_phase_inv``). libopus does both: ``opus_decode(NULL, 0)`` is its
packet-loss concealment and ``opus_decode(next_packet, decode_fec=1)`` recovers a lost packet
from the LBRR data in the packet after it. So :class:`OpusDecoder` binds libopus with ctypes:
the copy PyAV's wheel bundles (``av.libs/libopus-*.so*``, the library its encoder already
uses), else the system's ``libopus.so.0`` (Debian ``libopus0``). It decodes straight into
int16 numpy arrays, so no frame object, copy or conversion is made on the way to the meters.

:class:`OpusEncoder` encodes int16 numpy samples the same way: aiortc's encoder (PyAV frame,
``AudioResampler``, FFmpeg's ``libopusenc``) costs about twice as much per 20 ms frame. It is
configured as aiortc's: 48 kHz, ``application=voip``, 96 kbps, unconstrained VBR, complexity 10
(FFmpeg's defaults), optionally with in-band FEC planned for a given packet loss.

:func:`offer_inband_fec` adds ``useinbandfec=1`` to the Opus ``fmtp`` of an SDP (RFC 7587
section 7): the remote encoder may then send that LBRR data (browsers do).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
from typing import Any

import numpy as np

__all__ = [
    "BITRATE",
    "MAX_FRAME_SAMPLES",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
    "libopus",
    "offer_inband_fec",
]

SAMPLE_RATE = 48000
CHANNELS = 2
#: the longest Opus packet (120 ms at 48 kHz), per channel
MAX_FRAME_SAMPLES = 5760
#: a 20 ms frame, the duration assumed for a loss before anything was decoded
DEFAULT_FRAME_SAMPLES = 960
#: aiortc's Opus bitrate (bps)
BITRATE = 96000
#: the largest packet :class:`OpusEncoder` writes (RFC 6716's limit for one frame is 1275)
MAX_PACKET = 1500
#: frame sizes (samples per channel at 48 kHz) libopus encodes: 2.5 to 120 ms
ENCODER_FRAME_SAMPLES = frozenset((120, 240, 480, 960, 1920, 2880, 3840, 4800, 5760))

_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_VBR = 4006
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_VBR_CONSTRAINT = 4020


class OpusError(RuntimeError):
    """libopus could not be loaded, refused to create an encoder or decoder, or failed."""


_lib: Any = None


def _candidates() -> list[str]:
    import av  # the wheel's own libopus sits next to its FFmpeg libraries

    base = os.path.dirname(os.path.dirname(av.__file__))
    found: list[str] = []
    for pattern in ("av.libs/libopus*.so*", "av/.dylibs/libopus*.dylib"):
        found += sorted(glob.glob(os.path.join(base, pattern)))
    system = ctypes.util.find_library("opus")
    return found + ["libopus.so.0"] + ([system] if system else [])


def libopus() -> Any:
    """The loaded libopus (``ctypes.CDLL``), with the prototypes callkit uses declared."""
    global _lib
    if _lib is not None:
        return _lib
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_void_p]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        lib.opus_encoder_destroy.restype = None
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        # variadic; every request callkit makes takes one opus_int32
        lib.opus_encoder_ctl.restype = ctypes.c_int
        lib.opus_encoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int32]
        lib.opus_packet_has_lbrr.restype = ctypes.c_int
        lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
        lib.opus_get_version_string.restype = ctypes.c_char_p
        _lib = lib
        return lib
    raise OpusError("libopus not found (PyAV's bundled copy or libopus0): " + "; ".join(errors))


class OpusDecoder:
    """One libopus decoder (48 kHz stereo out, whatever the stream's channel count).

    :meth:`decode` a packet, or :meth:`conceal` a lost one; both return int16 arrays of
    shape ``(samples, 2)`` (a new array each time: callers may keep it). Not thread-safe.
    """

    def __init__(self) -> None:
        lib = libopus()
        err = ctypes.c_int(0)
        handle = lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(err))
        if not handle or err.value != 0:
            raise OpusError(f"opus_decoder_create failed ({err.value})")
        self._lib = lib
        self._handle: int | None = handle
        #: samples per channel of the last frame out (what a loss is assumed to last)
        self.frame_samples = DEFAULT_FRAME_SAMPLES
        #: packets libopus rejected (corrupt or hostile payloads)
        self.errors = 0
        # libopus decodes into this buffer (its address taken once: ``ndarray.ctypes`` costs
        # more than the copy of the frame out of it)
        self._out = np.empty((MAX_FRAME_SAMPLES, CHANNELS), dtype=np.int16)
        self._out_addr = self._out.ctypes.data

    def _run(self, data: bytes | None, frame_samples: int, fec: int) -> np.ndarray | None:
        if self._handle is None:
            raise OpusError("decoder closed")
        n = self._lib.opus_decode(
            self._handle,
            data,
            len(data) if data else 0,
            self._out_addr,
            min(frame_samples, MAX_FRAME_SAMPLES),
            fec,
        )
        if n < 0:
            self.errors += 1
            return None
        return self._out[:n].copy()

    def decode(self, data: bytes) -> np.ndarray | None:
        """The samples of one Opus packet; None (and ``errors`` + 1) if libopus rejects it.
        An empty packet is concealed like a lost one."""
        if not data:
            return self.conceal(None)[0]
        out = self._run(data, MAX_FRAME_SAMPLES, 0)
        if out is not None and len(out):
            self.frame_samples = len(out)
        return out

    def conceal(self, next_data: bytes | None) -> tuple[np.ndarray | None, bool]:
        """One lost frame: recovered from the in-band FEC of ``next_data`` (the packet after
        the loss) when it carries some, else packet-loss concealment. Returns ``(samples,
        used_fec)``."""
        if next_data and self._lib.opus_packet_has_lbrr(next_data, len(next_data)) == 1:
            out = self._run(next_data, self.frame_samples, 1)
            if out is not None:
                return out, True
        return self._run(None, self.frame_samples, 0), False

    def close(self) -> None:
        """Free the libopus state (idempotent)."""
        if self._handle is not None:
            self._lib.opus_decoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


class OpusEncoder:
    """One libopus encoder at 48 kHz with aiortc's settings, from int16 numpy samples.

    ``channels`` is what is encoded (1 or 2; a stereo stream's decoder upmixes mono at the
    same level, so mono costs less for a mono source). ``fec``: put in-band FEC (LBRR) in the
    packets, planned for ``packet_loss`` %. Not thread-safe.
    """

    def __init__(
        self,
        channels: int = 2,
        *,
        bitrate: int = BITRATE,
        fec: bool = False,
        packet_loss: int = 0,
    ) -> None:
        self._handle: int | None = None
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"bitrate must be in [6000, 510000] bps, got {bitrate!r}")
        if not 0 <= packet_loss <= 100:
            raise ValueError(f"packet_loss must be in [0, 100] %, got {packet_loss!r}")
        lib = libopus()
        err = ctypes.c_int(0)
        handle = lib.opus_encoder_create(
            SAMPLE_RATE, channels, _APPLICATION_VOIP, ctypes.byref(err)
        )
        if not handle or err.value != 0:
            raise OpusError(f"opus_encoder_create failed ({err.value})")
        self._lib = lib
        self._handle = handle
        self.channels = channels
        self.fec = bool(fec)
        self.bitrate = int(bitrate)
        for request, value in (
            (_SET_BITRATE, self.bitrate),
            (_SET_VBR, 1),
            (_SET_VBR_CONSTRAINT, 0),
            (_SET_COMPLEXITY, 10),
            (_SET_INBAND_FEC, int(self.fec)),
            (_SET_PACKET_LOSS_PERC, int(packet_loss)),
        ):
            code = lib.opus_encoder_ctl(handle, request, value)
            if code != 0:
                self.close()
                raise OpusError(f"opus_encoder_ctl({request}, {value}) failed ({code})")
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._pcm = np.zeros(MAX_FRAME_SAMPLES * channels, dtype=np.int16)
        self._pcm_address = self._pcm.ctypes.data
        #: frames encoded so far
        self.frames = 0

    def encode(self, samples: np.ndarray) -> bytes:
        """One Opus packet from int16 samples: shape ``(n,)`` (mono, duplicated for a stereo
        encoder) or ``(n, channels)``, with ``n`` a frame size libopus takes (960 = 20 ms)."""
        if self._handle is None:
            raise OpusError("encoder closed")
        if samples.dtype != np.int16:
            raise ValueError(f"samples must be int16, got {samples.dtype}")
        if (samples.ndim == 2 and samples.shape[1] != self.channels) or samples.ndim > 2:
            raise ValueError(f"expected {self.channels} channels, got shape {samples.shape}")
        n = samples.shape[0]
        if n not in ENCODER_FRAME_SAMPLES:
            raise ValueError(f"not an Opus frame size: {samples.shape} samples")
        # into the input buffer whose address was taken once (a mono frame fills every channel)
        self._pcm[: n * self.channels].reshape(n, self.channels)[...] = (
            samples if samples.ndim == 2 else samples[:, None]
        )
        size = self._lib.opus_encode(self._handle, self._pcm_address, n, self._out, MAX_PACKET)
        if size < 0:
            raise OpusError(f"opus_encode failed ({size})")
        self.frames += 1
        return ctypes.string_at(self._out, size)

    def close(self) -> None:
        """Free the libopus state (idempotent)."""
        if self._handle is not None:
            self._lib.opus_encoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000", re.IGNORECASE | re.MULTILINE)


def offer_inband_fec(sdp: str) -> str:
    """``sdp`` with ``useinbandfec=1`` in the ``fmtp`` of every Opus payload type of every
    media section (a new ``a=fmtp`` line after its ``rtpmap`` when it has none)."""
    out: list[str] = []
    section: list[str] = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            out += _section_inband_fec(section)
            section = []
        section.append(line)
    out += _section_inband_fec(section)
    return "\r\n".join(out)


def _section_inband_fec(lines: list[str]) -> list[str]:
    """One media section's lines with ``useinbandfec=1`` for each of its Opus payload types."""
    opus = {m.group(1) for line in lines if (m := _RTPMAP.match(line))}
    with_fmtp = {pt for pt in opus for line in lines if line.startswith(f"a=fmtp:{pt} ")}
    out: list[str] = []
    for line in lines:
        pt = next((pt for pt in opus if line.startswith(f"a=fmtp:{pt} ")), None)
        if pt is None:
            out.append(line)
        else:
            params = line[len(f"a=fmtp:{pt} ") :].split(";")
            params = [
                p for p in params if p.strip() and p.split("=")[0].strip().lower() != "useinbandfec"
            ]
            out.append(f"a=fmtp:{pt} " + ";".join([*params, "useinbandfec=1"]))
        rtpmap = _RTPMAP.match(line)
        if rtpmap is not None and rtpmap.group(1) not in with_fmtp:
            with_fmtp.add(rtpmap.group(1))
            out.append(f"a=fmtp:{rtpmap.group(1)} useinbandfec=1")
    return out
