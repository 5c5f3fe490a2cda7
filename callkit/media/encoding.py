"""Encode once per source: the peer connections of a group call share one encoder per codec.

aiortc gives every ``RTCRtpSender`` its own encoder, so in a mesh of N members each member
encodes its audio (and its video) N - 1 times per frame. An :class:`EncoderPool` belongs to
one local source (:class:`~callkit.media.tracks.LocalAudio` or
:class:`~callkit.media.tracks.LocalVideo`, which push the same frame, same ``pts``, to every
subscriber track); :meth:`EncoderPool.attach` makes a sender encode through the pool
(installed by :func:`callkit.media._compat.use_shared_encoder`). Senders that negotiated the
same codec settings (MIME type, clock rate, channels, format parameters) share one
:class:`SharedEncoder`: the first sender to ask for a frame encodes it (in a worker thread,
one encode at a time), the others get the same payloads.

What stays per sender: RTP sequence numbers, the random timestamp origin and the SSRC (aiortc's
``_run_rtp`` adds them to the shared payloads), RTCP, NACK retransmission history.

Audio is pushed, not pulled: an audio sender's RTP task is replaced
(:func:`callkit.media._compat.push_rtp`) so that each tick of the source's clock hands the
:class:`~callkit.media.tracks.AudioChunk` straight to every subscribed sender
(:meth:`SenderEncoder.push_attach`): the first sender of a codec setting encodes the int16
samples with libopus (:class:`~callkit.media.opus.OpusEncoder`, in the loop: about 100 to
200 us, less than a hand-off to a worker thread costs), the others reuse the packet, and each
writes its RTP packet (header, SRTP, ``sendto``) at once. No ``av.AudioFrame``, queue or task
wake-up per sender and frame. Opus is encoded *mono* unless the peer's ``fmtp`` says
``stereo=1`` (RFC 7587: without it the receiver prefers mono; the source is mono anyway, and
decoders that play stereo upmix it at the same level), which costs about a third less.
A sender whose track cannot push (another source, a frame size libopus does not take) reads
frames as aiortc does, through the shared aiortc encoder.

Shared decisions:

- a keyframe request (PLI / FIR) from any peer makes the next frame a keyframe for all; a new
  sender joining a video encoder also asks for one, so its peer can start decoding. At most
  one forced keyframe per :data:`KEYFRAME_INTERVAL` (a request in between is served when it
  is over): a peer flooding PLIs cannot make every frame a keyframe for everybody;
- bitrate (REMB): the encoder runs at the lowest bitrate any of its senders' peers asked for
  (a peer that never sent REMB does not count), so no peer gets more than it can take; peers
  with better links get the same stream (a mesh cannot do better without simulcast);
- a sender that falls behind by more than :data:`CACHE_FRAMES` frames skips the frames it
  missed instead of making the encoder go back in time.

Opus in-band FEC: a peer whose SDP says ``useinbandfec=1`` in the Opus ``fmtp`` (callkit's own
offers and answers do, browsers do) gets packets with LBRR data, libopus planning for
:data:`FEC_PACKET_LOSS` % loss; the session tells its sender (:meth:`SenderEncoder.set_remote_fec`)
and the flag becomes part of the codec settings the sharing key is made of, so FEC peers
share one encoder and peers without FEC another, which sends plain packets.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from aiortc.codecs import get_encoder
from av.frame import Frame

from . import _compat
from .opus import ENCODER_FRAME_SAMPLES, OpusEncoder

__all__ = [
    "CACHE_FRAMES",
    "FEC_PACKET_LOSS",
    "KEYFRAME_INTERVAL",
    "EncoderPool",
    "SenderEncoder",
    "SharedEncoder",
    "opus_stereo",
]

log = logging.getLogger(__name__)

#: encoded frames kept for senders that read their track a little later than the first
CACHE_FRAMES = 8
#: shortest time (s) between two forced keyframes of one shared encoder
KEYFRAME_INTERVAL = 0.5
#: the packet loss (%) libopus plans its in-band FEC for, for peers that asked for FEC. With
#: libopus 1.6 at aiortc's 96 kbps, voice-like audio gets LBRR alike at 6 to 15 %; from 8 %
#: up a steady tone also leaves CELT for hybrid mode, whose concealment of it is 8 dB
#: quieter (docs/performance.md), so 7
FEC_PACKET_LOSS = 7

Encoded = tuple[list[bytes], int]


def codec_key(codec: Any) -> tuple[Any, ...]:
    """What must match for two senders to share an encoder (payload type need not)."""
    params = tuple(sorted((str(k), str(v)) for k, v in (codec.parameters or {}).items()))
    return (codec.mimeType.lower(), codec.clockRate, codec.channels, params)


def inband_fec(codec: Any) -> bool:
    """True for Opus with ``useinbandfec=1`` in its format parameters."""
    value = (codec.parameters or {}).get("useinbandfec")
    return codec.mimeType.lower() == "audio/opus" and str(value).strip() == "1"


def opus_stereo(codec: Any) -> bool:
    """True for Opus with ``stereo=1`` in its format parameters (the receiver prefers stereo;
    RFC 7587 section 7.1)."""
    value = (codec.parameters or {}).get("stereo")
    return codec.mimeType.lower() == "audio/opus" and str(value).strip() == "1"


class SharedEncoder:
    """One aiortc encoder for every sender of one source with the same codec settings."""

    def __init__(self, codec: Any, *, keyframe_interval: float = KEYFRAME_INTERVAL) -> None:
        self.codec_key = codec_key(codec)
        self.keyframe_interval = keyframe_interval
        self._last_forced: float | None = None
        self.video = codec.mimeType.lower().startswith("video/")
        self._encoder = get_encoder(codec)
        self.inband_fec = inband_fec(codec)
        """Packets carry Opus in-band FEC (the peers asked for it with ``useinbandfec=1``)."""
        if self.inband_fec:
            _compat.opus_inband_fec(self._encoder, FEC_PACKET_LOSS)
        self.opus_channels = 2 if opus_stereo(codec) else 1
        """Channels libopus encodes pushed chunks in (1 unless the peer asked for stereo)."""
        self._opus: OpusEncoder | None = None
        self._pushed: tuple[int, Encoded] | None = None  # (pts, result) of the last chunk
        self._cache: collections.OrderedDict[Any, asyncio.Future[Encoded]] = (
            collections.OrderedDict()
        )
        self._newest: Any = None
        self._keyframe = False
        self._keyframes: set[Any] = set()  # cached frames that are keyframes
        self._lock = asyncio.Lock()
        self._bitrates: weakref.WeakKeyDictionary[SenderEncoder, int] = weakref.WeakKeyDictionary()
        self.frames_encoded = 0
        """Frames actually encoded (one per source frame, whatever the number of senders)."""
        self.keyframes_forced = 0
        """Frames encoded as keyframes because a peer asked (PLI / FIR) or a sender joined."""

    @property
    def target_bitrate(self) -> int | None:
        """The encoder's bitrate (bps) if it has one (VP8, H.264), else None (Opus)."""
        value = getattr(self._encoder, "target_bitrate", None)
        return int(value) if value is not None else None

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (for every sender)."""
        self._keyframe = True

    def set_bitrate(self, sender: SenderEncoder, bitrate: int) -> None:
        """``sender``'s peer asked for at most ``bitrate`` bps (REMB): run at the lowest."""
        self._bitrates[sender] = int(bitrate)
        if hasattr(self._encoder, "target_bitrate"):
            self._encoder.target_bitrate = min(self._bitrates.values())

    def forget(self, sender: SenderEncoder) -> None:
        """``sender`` stopped: its bitrate request no longer counts."""
        self._bitrates.pop(sender, None)
        if self._bitrates and hasattr(self._encoder, "target_bitrate"):
            self._encoder.target_bitrate = min(self._bitrates.values())

    async def encode(self, frame: Frame, *, keyframe: bool = False) -> Encoded | None:
        """``frame`` encoded, once per ``pts`` for all senders; None when the encoder has
        moved past it (the caller skips the frame). ``keyframe``: the caller needs this frame,
        or failing that the next, to be a keyframe (a new peer)."""
        key = frame.pts if frame.pts is not None else id(frame)
        future = self._cache.get(key)
        if future is None:
            if frame.pts is not None and self._newest is not None and key <= self._newest:
                if keyframe:
                    self._keyframe = True
                return None  # older than what was encoded last and no longer cached
            wanted = self._keyframe or keyframe
            now = time.monotonic()
            force = wanted and (
                self._last_forced is None or now - self._last_forced >= self.keyframe_interval
            )
            self._keyframe = wanted and not force  # too soon after the last one: later
            if force:
                self._last_forced = now
            if force or not self._cache:  # an encoder's first frame is a keyframe too
                self._keyframes.add(key)
            future = asyncio.ensure_future(self._encode(frame, force))
            self._cache[key] = future
            self._newest = key if frame.pts is not None else self._newest
            while len(self._cache) > CACHE_FRAMES:
                old, _ = self._cache.popitem(last=False)
                self._keyframes.discard(old)
        elif keyframe and key not in self._keyframes:
            self._keyframe = True  # already encoded as a delta frame: the next one then
        return await asyncio.shield(future)

    def encode_chunk(self, samples: Any, pts: int) -> Encoded | None:
        """The Opus packet of one pushed chunk (mono int16 at 48 kHz, ``pts`` in samples),
        encoded once per ``pts`` for all senders, in the calling thread; its RTP timestamp is
        ``pts``. None for a chunk older than the last one encoded."""
        pushed = self._pushed
        if pushed is not None:
            if pts == pushed[0]:
                return pushed[1]
            if pts < pushed[0]:
                return None
        if self._opus is None:
            self._opus = OpusEncoder(
                self.opus_channels,
                fec=self.inband_fec,
                packet_loss=FEC_PACKET_LOSS if self.inband_fec else 0,
            )
        encoded: Encoded = ([self._opus.encode(samples)], pts)
        self._pushed = (pts, encoded)
        self.frames_encoded += 1
        return encoded

    async def _encode(self, frame: Frame, force: bool) -> Encoded:
        async with self._lock:  # aiortc's encoders are not thread-safe: one encode at a time
            loop = asyncio.get_running_loop()
            payloads, timestamp = await loop.run_in_executor(None, self._run, frame, force)
            self.frames_encoded += 1
            self.keyframes_forced += force
            return payloads, timestamp

    def _run(self, frame: Frame, force: bool) -> Encoded:
        """Encode in a worker thread. PyAV rebases ``frame.pts`` to the codec's time base in
        place; it is put back, as other senders may still look the frame up by it."""
        pts, time_base = frame.pts, frame.time_base
        try:
            return self._encoder.encode(frame, force)  # type: ignore[no-any-return]
        finally:
            frame.pts, frame.time_base = pts, time_base


class SenderEncoder:
    """What one sender encodes with: its pool's shared encoder for the sender's codec."""

    def __init__(self, pool: EncoderPool) -> None:
        self._pool = pool
        self._shared: SharedEncoder | None = None
        self._keyframe_wanted = False
        self._fec_types: frozenset[int] = frozenset()
        self._stereo_types: frozenset[int] = frozenset()
        self._rebind = False
        self._switched = False
        self._ts_offset = 0
        #: (frame time in codec clock units, RTP timestamp) of the last frame out
        self._last: tuple[int, int] | None = None

    @property
    def shared(self) -> SharedEncoder | None:
        """The shared encoder, once the first frame told which codec was negotiated."""
        return self._shared

    def set_remote_fec(
        self, payload_types: frozenset[int], stereo: frozenset[int] = frozenset()
    ) -> None:
        """The payload types whose ``fmtp`` in the remote description says ``useinbandfec=1``
        (and those saying ``stereo=1``); set after each negotiation, a change moves the
        sender to a matching encoder."""
        if payload_types != self._fec_types or stereo != self._stereo_types:
            self._fec_types = frozenset(payload_types)
            self._stereo_types = frozenset(stereo)
            self._rebind = self._shared is not None

    def _settings(self, codec: Any) -> Any:
        """``codec`` with ``useinbandfec`` and ``stereo`` set as the remote asked (aiortc's
        negotiated codec holds our own capability's parameters, not the remote's)."""
        params = {
            k: v for k, v in (codec.parameters or {}).items() if k not in ("useinbandfec", "stereo")
        }
        if codec.mimeType.lower() == "audio/opus":
            if codec.payloadType in self._fec_types:
                params["useinbandfec"] = "1"
            if codec.payloadType in self._stereo_types:
                params["stereo"] = "1"
        return dataclasses.replace(codec, parameters=params)

    def _bind(self, codec: Any) -> SharedEncoder:
        shared = self._shared
        if shared is not None and self._rebind:
            self.release()
            shared = self._shared = None
            self._switched = self._last is not None
        if shared is None:
            self._rebind = False
            shared = self._shared = self._pool.bind(self, self._settings(codec))
            if shared.video:  # a new peer decodes nothing until a keyframe
                self._keyframe_wanted = True
        return shared

    def push_attach(self, writer: _compat.RtpWriter, track: Any) -> Callable[[], None] | None:
        """:func:`~callkit.media._compat.push_rtp`'s hook: make ``track`` (a
        :class:`~callkit.media.tracks.LocalAudio` subscriber) push its chunks into
        ``writer``, encoded through this sender's shared encoder; None (read frames instead)
        for another track, a codec other than Opus or chunks libopus cannot take."""
        codec = writer.codec
        attach = getattr(track, "attach_sink", None)
        push_format = getattr(track, "push_format", None)
        if (
            attach is None
            or codec.mimeType.lower() != "audio/opus"
            or push_format is None
            or push_format[0] != codec.clockRate
            or push_format[1] not in ENCODER_FRAME_SAMPLES
        ):
            return None

        def sink(chunk: Any) -> None:
            if writer.error is not None or not writer.enabled:
                return  # a disabled sender drops its frames, as aiortc's does
            try:
                encoded = self._bind(codec).encode_chunk(chunk.samples, chunk.pts)
                if encoded is not None:
                    writer.write(encoded[0], encoded[1], -chunk.level)
            except Exception as exc:  # this sender ends; the source serves the others
                writer.fail(exc)

        detach: Callable[[], None] | None = attach(sink, writer.wake)
        return detach

    async def encode(self, frame: Frame, codec: Any) -> Encoded | None:
        shared = self._bind(codec)
        keyframe, self._keyframe_wanted = self._keyframe_wanted, False
        encoded = await shared.encode(frame, keyframe=keyframe)
        if encoded is None or encoded[1] is None or frame.pts is None or not frame.time_base:
            return encoded
        payloads, timestamp = encoded
        at = int(frame.pts * frame.time_base * codec.clockRate)
        if self._switched and self._last is not None:
            # the new encoder counts from its own first frame: continue this sender's RTP
            # timestamps from where the old one left them, so the peer sees no jump
            last_at, last_ts = self._last
            self._ts_offset = last_ts + (at - last_at) - timestamp
        self._switched = False
        timestamp += self._ts_offset
        self._last = (at, timestamp)
        return payloads, timestamp

    def request_keyframe(self) -> None:
        """A PLI / FIR from this sender's peer."""
        if self._shared is not None:
            self._shared.request_keyframe()
        else:
            self._keyframe_wanted = True

    @property
    def target_bitrate(self) -> int | None:
        return self._shared.target_bitrate if self._shared is not None else None

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        """A REMB from this sender's peer."""
        if self._shared is not None:
            self._shared.set_bitrate(self, bitrate)

    def release(self) -> None:
        """The sender stopped (its peer connection closed); idempotent."""
        if self._shared is not None:
            self._shared.forget(self)
            self._pool.unbind(self, self._shared)


class EncoderPool:
    """The shared encoders of one local source, by codec settings."""

    def __init__(self, *, keyframe_interval: float = KEYFRAME_INTERVAL) -> None:
        self._encoders: dict[tuple[Any, ...], SharedEncoder] = {}
        self._users: dict[tuple[Any, ...], set[SenderEncoder]] = {}
        self._keyframe_interval = keyframe_interval

    def encoder_for(self, codec: Any) -> SharedEncoder:
        """The shared encoder for ``codec``'s settings (made on first use)."""
        key = codec_key(codec)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = SharedEncoder(
                codec, keyframe_interval=self._keyframe_interval
            )
        return encoder

    def bind(self, sender: SenderEncoder, codec: Any) -> SharedEncoder:
        """``sender``'s shared encoder for ``codec``; kept while a sender uses it."""
        encoder = self.encoder_for(codec)
        self._users.setdefault(encoder.codec_key, set()).add(sender)
        return encoder

    def unbind(self, sender: SenderEncoder, encoder: SharedEncoder) -> None:
        """``sender`` stopped: an encoder nobody uses any more is dropped (so peers that
        negotiate ever new codec settings cannot make the pool grow)."""
        users = self._users.get(encoder.codec_key, set())
        users.discard(sender)
        if not users and self._encoders.get(encoder.codec_key) is encoder:
            del self._encoders[encoder.codec_key]
            self._users.pop(encoder.codec_key, None)

    @property
    def encoders(self) -> list[SharedEncoder]:
        """Every shared encoder made so far."""
        return list(self._encoders.values())

    def attach(self, sender: Any) -> SenderEncoder:
        """Make ``sender`` (an aiortc ``RTCRtpSender`` not started yet) encode through this
        pool, and an audio sender take pushed chunks (:meth:`SenderEncoder.push_attach`);
        idempotent."""
        current = _compat.shared_encoder(sender)
        if isinstance(current, SenderEncoder) and current._pool is self:
            return current
        handle = SenderEncoder(self)
        _compat.use_shared_encoder(sender, handle)
        if sender.kind == "audio":
            _compat.push_rtp(sender, handle.push_attach)
        return handle
