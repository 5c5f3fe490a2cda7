"""The receive path of one remote audio track, run in the event loop: reorder, decode, conceal.

aiortc's audio receiver (1.16) puts every reassembled Opus frame on a queue to a decoder
thread, which decodes it with PyAV, wraps it in an ``AudioFrame`` and hands it back to the
loop (``run_coroutine_threadsafe``) onto the track's ``asyncio.Queue``; a consumer task then
awaits ``recv()`` and converts the frame to int16 for the meters. A lost packet is simply
missing: the far end hears a gap.

:class:`AudioReceiver` takes the place of the receiver's jitter buffer
(:func:`callkit.media._compat.use_jitter_buffer`) and, for Opus, does the whole path itself,
synchronously, as each packet arrives: :class:`~callkit.media.jitter.AudioJitterBuffer` →
:class:`~callkit.media.opus.OpusDecoder` (int16 numpy, one array per frame) → ``sink(samples,
sample_rate, concealed)``. Missing packets the buffer gives up are concealed (up to
``MAX_CONCEAL`` frames per gap and ``CONCEAL_RATE`` per second): the last one from the in-band
FEC of the packet after it when that packet carries some, the others by libopus's packet-loss
concealment (as is a packet that is empty or that libopus rejects). It then hands aiortc no
frame, so aiortc's decoder thread, queue and frame objects stay idle. Packets of any other
codec go through the buffer's aiortc-compatible :meth:`AudioJitterBuffer.add` to aiortc's
own decoder, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc.jitterbuffer import JitterFrame

from . import _compat
from .jitter import AudioJitterBuffer
from .opus import SAMPLE_RATE, OpusDecoder

__all__ = ["MAX_CONCEAL", "AudioReceiver", "AudioSink"]

log = logging.getLogger(__name__)

#: most frames concealed for one gap (100 ms: libopus's concealment has faded out by then)
MAX_CONCEAL = 5
#: concealed frames allowed per second of wall time, and at once (a token bucket): real audio
#: never needs more than its own frame rate, while a hostile sender skipping sequence numbers
#: would otherwise buy MAX_CONCEAL decodes with every packet
CONCEAL_RATE = 50.0
CONCEAL_BURST = 50.0

#: ``sink(samples, sample_rate, concealed)``: int16 ``(n, 2)``; ``concealed`` for a lost frame
AudioSink = Callable[[np.ndarray, int, bool], None]


class AudioReceiver:
    """Jitter buffer, Opus decoder and concealment for one aiortc audio receiver.

    Has aiortc's jitter-buffer interface (``add(packet) -> (pli, frame)``, ``capacity``);
    decoded audio goes to :attr:`sink` (nothing is decoded while it is None).
    """

    def __init__(self, receiver: Any, jitter: AudioJitterBuffer | None = None) -> None:
        self._receiver = receiver
        self.jitter = jitter if jitter is not None else AudioJitterBuffer()
        self.sink: AudioSink | None = None
        self._decoder: OpusDecoder | None = None
        self._is_opus: dict[int, bool] = {}
        #: counters, for tests and benchmarks: frames decoded, concealed by libopus's PLC,
        #: recovered from in-band FEC, and packets handed to aiortc's decoder (other codecs)
        self.decoded = 0
        self.concealed = 0
        self.recovered = 0
        self.passed_on = 0
        #: lost frames left unconcealed because the concealment budget was spent
        self.unconcealed = 0
        self._tokens = CONCEAL_BURST
        self._tokens_at = time.monotonic()

    @property
    def capacity(self) -> int:
        """The most packets the jitter buffer keeps (aiortc's buffers expose it)."""
        return self.jitter.capacity

    def _opus(self, payload_type: int) -> bool:
        known = self._is_opus.get(payload_type)
        if known is None:
            codec = _compat.receiver_codecs(self._receiver).get(payload_type)
            known = codec is not None and codec.mimeType.lower() == "audio/opus"
            if codec is not None:  # payload types are 7 bits: at most 128 entries
                self._is_opus[payload_type] = known
        return known

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        """aiortc's receiver calls this for each audio RTP packet (``_data`` set)."""
        if not self._opus(packet.payload_type):
            self.passed_on += 1
            return self.jitter.add(packet)
        given_up, out = self.jitter.push(packet)
        sink = self.sink
        if out is None or sink is None:
            return False, None
        if self._decoder is None:
            self._decoder = OpusDecoder()
        decoder, data = self._decoder, out._data
        if given_up:
            given_up = self._budget(given_up)
        for i in range(min(given_up, MAX_CONCEAL), 0, -1):
            samples, fec = decoder.conceal(data if i == 1 else None)
            if samples is not None:
                if fec:
                    self.recovered += 1
                else:
                    self.concealed += 1
                self._deliver(sink, samples, True)
        samples = decoder.decode(data) if data else None
        if samples is not None:
            self.decoded += 1
            self._deliver(sink, samples, False)
            return False, None
        samples = None  # empty, or rejected by libopus: a lost frame
        if self._budget(1):
            samples, _ = decoder.conceal(None)
        if samples is not None:
            self.concealed += 1
            self._deliver(sink, samples, True)
        return False, None

    def _budget(self, frames: int) -> int:
        """How many of ``frames`` lost frames may be concealed now (the rest are counted in
        ``unconcealed``)."""
        now = time.monotonic()
        self._tokens = min(CONCEAL_BURST, self._tokens + (now - self._tokens_at) * CONCEAL_RATE)
        self._tokens_at = now
        allowed = min(frames, MAX_CONCEAL, int(self._tokens))
        self._tokens -= allowed
        self.unconcealed += frames - allowed
        return allowed

    def _deliver(self, sink: AudioSink, samples: np.ndarray, concealed: bool) -> None:
        try:
            sink(samples, SAMPLE_RATE, concealed)
        except Exception:  # never into aiortc's RTP handling
            log.exception("audio sink failed")

    def close(self) -> None:
        """Free the decoder (idempotent); later packets are decoded by a new one."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
