"""callkit's own sender puts Opus in-band FEC (LBRR) in its packets for peers that ask for it
(``useinbandfec=1``), and plain packets for peers that do not (callkit.media.encoding, peer).
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters

from callkit.media import NetworkConditions, _compat
from callkit.media.encoding import EncoderPool, SenderEncoder
from callkit.media.opus import libopus
from callkit.media.peer import remote_fec_payload_types
from callkit.media.receiver import AudioReceiver
from callkit.media.sources import AudioSource
from callkit.media.tracks import LocalAudio
from callkit.media.volume import rms_dbfs

from .helpers import RawAudioPeer, audio_path, connect, raw_audio_sessions

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
FRAME = 960
AMPLITUDE = 0.3 * 32767
LEVEL = 20 * np.log10(0.3 / np.sqrt(2))  # dBFS of a sine at AMPLITUDE (-13.5)


class SpeechLike(AudioSource):
    """A tone that jumps to a new pitch and phase every 20 ms: libopus codes it as voice
    (SILK / hybrid), where in-band FEC lives, and concealment cannot guess the next frame."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(48000, 1)
        self._rng = np.random.default_rng(seed)
        self._left = np.zeros(0, dtype=np.int16)

    def read(self, n: int) -> np.ndarray:
        t = np.arange(FRAME) / 48000
        parts = [self._left]
        have = len(self._left)
        while have < n:
            f, phase = self._rng.uniform(200, 1500), self._rng.random() * 6
            parts.append((AMPLITUDE * np.sin(2 * np.pi * f * t + phase)).astype(np.int16))
            have += FRAME
        out = np.concatenate(parts)
        self._left = out[n:]
        return out[:n].reshape(-1, 1)


def frames(count: int, seed: int = 1) -> list[av.AudioFrame]:
    source = SpeechLike(seed)
    out = []
    for i in range(count):
        mono = source.read(FRAME)[:, 0]
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * FRAME
        frame.time_base = fractions.Fraction(1, 48000)
        out.append(frame)
    return out


def lbrr(packets: list[bytes]) -> int:
    """How many of ``packets`` carry in-band FEC."""
    lib = libopus()
    return sum(lib.opus_packet_has_lbrr(p, len(p)) == 1 for p in packets)


async def encode_all(sender: SenderEncoder, items: list[av.AudioFrame]) -> list[bytes]:
    packets: list[bytes] = []
    for frame in items:
        encoded = await sender.encode(frame, OPUS)
        if encoded is not None:
            packets += encoded[0]
    return packets


SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=fmtp:0 useinbandfec=1\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=0\r\n"
)


def test_remote_fec_payload_types_reads_only_opus_that_asks() -> None:
    # PCMU claiming FEC and a value other than 1 are ignored; sections are told apart by mid
    assert remote_fec_payload_types(SDP, "0") == {111}
    assert remote_fec_payload_types(SDP, "1") == frozenset()
    assert remote_fec_payload_types(SDP, "9") == frozenset()


async def test_fec_and_plain_senders_get_separate_encoders() -> None:
    pool = EncoderPool()
    fec_a, fec_b, plain = SenderEncoder(pool), SenderEncoder(pool), SenderEncoder(pool)
    fec_a.set_remote_fec(frozenset({111}))
    fec_b.set_remote_fec(frozenset({111}))
    plain.set_remote_fec(frozenset({96}))  # FEC for a payload type this sender does not use
    items = frames(30)  # the FEC peers join 10 frames later
    with_fec, _, without = await asyncio.gather(
        encode_all(fec_a, items[10:]), encode_all(fec_b, items[10:]), encode_all(plain, items)
    )
    assert fec_a.shared is fec_b.shared and fec_a.shared is not plain.shared
    assert fec_a.shared is not None and fec_a.shared.inband_fec
    assert plain.shared is not None and not plain.shared.inband_fec
    assert fec_a.shared.frames_encoded == 20  # shared: encoded once for both senders
    assert lbrr(with_fec) > 12 and lbrr(without) == 0, (lbrr(with_fec), lbrr(without))
    # the peer renegotiates with FEC: the sender moves to the FEC encoder, the old one goes
    old = plain.shared
    plain.set_remote_fec(frozenset({111}))
    later = frames(40)[30:]  # the frames after those already sent
    stamps = []
    for frame in later:
        encoded = await plain.encode(frame, OPUS)
        assert encoded is not None
        stamps.append(encoded[1])
    assert plain.shared is fec_a.shared and old not in pool.encoders
    assert len(pool.encoders) == 1
    # ... and its RTP timestamps go on from where the plain encoder left them
    assert all(b - a == FRAME for a, b in itertools.pairwise(stamps)), stamps
    assert 29 * FRAME < stamps[0] <= 31 * FRAME, stamps
    # FEC is set before the encoder opens; an opened one is refused, not silently ignored
    with pytest.raises(RuntimeError):
        _compat.opus_inband_fec(fec_a.shared._encoder, 10)


@pytest.mark.parametrize("loss", [0.05, 0.10])
async def test_fec_beats_concealment_at_a_small_bitrate_cost(loss: float) -> None:
    """The figures of docs/performance.md: SNR of the lost frames and bytes/s, with and
    without FEC, 10 s of speech-like audio through the shared encoder and AudioReceiver."""
    items = frames(500, seed=3)
    rng = np.random.default_rng(11)
    lost = {i for i in range(20, 480) if rng.random() < loss}
    signal = np.concatenate([f.to_ndarray()[0, ::2] for f in items]).astype(float)
    results = {}
    for fec in (True, False):
        sender = SenderEncoder(EncoderPool())
        sender.set_remote_fec(frozenset({111} if fec else ()))
        packets = await encode_all(sender, items)
        path = AudioReceiver(_Codecs())
        out: list[tuple[np.ndarray, bool]] = []
        path.sink = lambda samples, rate, concealed, out=out: out.append((samples, concealed))
        for seq, data in enumerate(packets):
            if seq not in lost:
                path.add(_Packet(seq, data))
        decoded = np.concatenate([s[:, 0] for s, _ in out]).astype(float)
        lag = max(range(700), key=lambda k: float(np.dot(decoded[k : k + 48000], signal[:48000])))
        err, sig = [0.0, 0.0], [0.0, 0.0]  # [clean frames, lost frames]
        for i, (_, concealed) in enumerate(out[10:-2], start=10):
            r = signal[i * FRAME : (i + 1) * FRAME]
            err[concealed] += float(
                np.sum((decoded[i * FRAME + lag : (i + 1) * FRAME + lag] - r) ** 2)
            )
            sig[concealed] += float(np.sum(r**2))
        snr = [round(float(10 * np.log10(s / e)), 1) for s, e in zip(sig, err, strict=True)]
        rate = round(sum(map(len, packets)) / (len(packets) * 0.02))
        results[fec] = (snr[1], rate, path.recovered, path.concealed, snr[0])
        # every lost frame is filled, but for the concealment budget (50 at once)
        assert path.recovered + path.concealed + path.unconcealed == len(lost)
    print(
        f"\nloss {loss:.0%} ({len(lost)} of 460 frames): (SNR lost frames dB, bytes/s, "
        f"recovered, concealed, SNR clean frames dB) FEC {results[True]} plain {results[False]}"
    )
    (snr_fec, rate_fec, recovered, _, _), (snr_plc, rate_plc, none, concealed, _) = (
        results[True],
        results[False],
    )
    assert recovered > 0.6 * len(lost) and none == 0 and concealed >= len(lost) - 5
    assert snr_fec > snr_plc + 6, results
    assert rate_fec < 1.5 * rate_plc, results  # FEC costs bytes, within bounds


class _Codecs:
    """Stands in for the aiortc receiver only to say payload type 111 is Opus."""

    def __init__(self) -> None:
        self._RTCRtpReceiver__codecs = {111: OPUS}


class _Packet:
    def __init__(self, seq: int, data: bytes) -> None:
        self.sequence_number, self.timestamp = seq, seq * FRAME
        self.payload_type, self._data = 111, data


@pytest.mark.loopback
async def test_engines_recover_lost_frames_from_fec(make_engine) -> None:
    """alice (callkit) sends through 10 % loss: bob (callkit, which offers useinbandfec=1)
    recovers lost frames from the FEC in alice's packets, near the level of the clean ones."""
    alice, ra = await make_engine(
        "alice", audio_source=SpeechLike(), network=NetworkConditions(loss=0.10, seed=7)
    )
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    session, path = await audio_path(bob, "alice")
    deadline = time.monotonic() + 10
    frames_in: list[tuple[np.ndarray, bool]] = []  # (samples, recovered from FEC)
    forward = path.sink
    seen = [0]

    def sink(samples: np.ndarray, rate: int, concealed: bool) -> None:
        frames_in.append((samples, path.recovered > seen[0]))  # counted before delivery
        seen[0] = path.recovered
        forward(samples, rate, concealed)

    path.sink = sink
    while path.recovered < 6 and time.monotonic() < deadline + 5:
        await asyncio.sleep(0.1)
    (encoder,) = alice._mesh.audio_encoders.encoders
    await alice.hangup()
    assert encoder.inband_fec
    assert path.recovered >= 6, (path.recovered, path.concealed, path.jitter.lost)
    assert session.remote_audio is not None
    assert session.remote_audio.frames_concealed == path.concealed + path.recovered
    clean = np.median([rms_dbfs(s) for s, fec in frames_in[25:] if not fec])
    recovered = np.median([rms_dbfs(s) for s, fec in frames_in[25:] if fec])
    print(f"\nlevel dBFS: recovered {recovered:.1f}, others {clean:.1f}")
    # LBRR is a low-bitrate copy: a few dB below, far from the silence of a gap
    assert abs(recovered - clean) < 6 and abs(clean - LEVEL) < 2, (recovered, clean)


@pytest.mark.loopback
async def test_raw_peer_without_fec_gets_plain_packets_at_the_same_level() -> None:
    """One callkit source, two raw aiortc peers: the one whose answer asks for FEC gets LBRR
    in its packets, the other plain packets (a separate encoder); both hear the same level."""
    local = LocalAudio(SpeechLike())
    pool = EncoderPool()
    peers = [RawAudioPeer(ask_fec=True), RawAudioPeer(ask_fec=False)]
    sessions = []
    try:
        sessions = await raw_audio_sessions(local, pool, peers)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(
            len(p.payloads) < 100 or len(p.levels) < 100 for p in peers
        ):
            await asyncio.sleep(0.1)
        with_fec, plain = peers
        assert len(with_fec.payloads) >= 100 and len(plain.payloads) >= 100
        assert lbrr(with_fec.payloads) > 50 and lbrr(plain.payloads) == 0
        assert sorted(e.inband_fec for e in pool.encoders) == [False, True]
        levels = [float(np.median(p.levels[20:])) for p in peers]
        assert all(abs(level - LEVEL) < 1.5 for level in levels), levels
    finally:
        for session in sessions:
            await session.close()
        for peer in peers:
            if peer.task is not None:
                peer.task.cancel()
            await peer.pc.close()
        await local.stop()
