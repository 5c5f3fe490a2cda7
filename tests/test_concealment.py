"""Opus loss concealment and in-band FEC (callkit.media.opus, callkit.media.receiver).

Real Opus packets from PyAV's libopus encoder go through the receive path with packets
dropped; then a real call through the network simulator with 5 % loss. What is checked is
what a listener gets: a frame for every lost packet, close to the signal that was sent.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpCodecParameters

from callkit.media import NetworkConditions, ToneSource
from callkit.media.opus import OpusDecoder, libopus, offer_inband_fec
from callkit.media.receiver import CONCEAL_BURST, MAX_CONCEAL, AudioReceiver

from .helpers import audio_path, connect

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
PCMU = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, channels=1, payloadType=0)
FRAME = 960


class Packet:
    """What aiortc's receiver hands its jitter buffer: an RTP packet with ``_data`` set."""

    def __init__(self, seq: int, data: bytes, payload_type: int = 111) -> None:
        self.sequence_number = seq % 0x10000
        self.timestamp = seq * FRAME
        self.payload_type = payload_type
        self._data = data


class Receiver:
    """Stands in for the aiortc receiver only to say which codec a payload type is."""

    def __init__(self) -> None:
        self._RTCRtpReceiver__codecs = {111: OPUS, 0: PCMU}


def speech_like(frames: int, seed: int = 1) -> np.ndarray:
    """A tone that jumps to a new pitch and phase every 20 ms (what PLC cannot guess)."""
    rng = np.random.default_rng(seed)
    t = np.arange(FRAME) / 48000
    parts = [
        0.3 * 32767 * np.sin(2 * np.pi * f * t + rng.random() * 6)
        for f in rng.uniform(200, 1500, frames)
    ]
    return np.concatenate(parts).astype(np.int16)


def encode(signal: np.ndarray, fec: bool) -> list[bytes]:
    """Opus packets of ``signal`` (mono, duplicated to stereo) with aiortc's encoder settings,
    plus in-band FEC if asked."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout = 96000, "s16", "stereo"
    codec.sample_rate, codec.time_base = 48000, fractions.Fraction(1, 48000)
    codec.options = {"application": "voip", **({"fec": "1", "packet_loss": "10"} if fec else {})}
    packets = []
    for i in range(len(signal) // FRAME):
        mono = signal[i * FRAME : (i + 1) * FRAME]
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * FRAME
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


def receive(packets: list[bytes], lost: set[int]) -> tuple[AudioReceiver, list[Any]]:
    path = AudioReceiver(Receiver())
    out: list[tuple[np.ndarray, bool]] = []
    path.sink = lambda samples, rate, concealed: out.append((samples, concealed))
    for seq, data in enumerate(packets):
        if seq not in lost:
            path.add(Packet(seq, data))
    return path, out


def snr_db(out: list[Any], signal: np.ndarray, concealed: bool) -> float:
    """SNR of the frames with that ``concealed`` flag, against the signal (codec delay
    found by cross-correlation)."""
    decoded = np.concatenate([s[:, 0] for s, _ in out]).astype(float)
    ref = signal[: len(decoded)].astype(float)
    lag = max(range(0, 700), key=lambda k: float(np.dot(decoded[k : k + 48000], ref[:48000])))
    err = sig = 0.0
    for i, (_, c) in enumerate(out[10:-2], start=10):
        if c == concealed:
            seg = decoded[i * FRAME + lag : (i + 1) * FRAME + lag]
            r = ref[i * FRAME : (i + 1) * FRAME]
            err += float(np.sum((seg - r) ** 2))
            sig += float(np.sum(r**2))
    return 10 * np.log10(sig / err)


def test_libopus_is_found_and_decodes() -> None:
    assert libopus().opus_get_version_string().startswith(b"libopus")
    packets = encode(speech_like(5), fec=False)
    decoder = OpusDecoder()
    frames = [decoder.decode(p) for p in packets]
    assert all(f is not None and f.shape == (FRAME, 2) and f.dtype == np.int16 for f in frames)


def test_every_lost_frame_is_concealed_in_order() -> None:
    signal = speech_like(200)
    lost = set(range(15, 200, 10)) | {40, 41, 42}  # single losses and one run of four
    path, out = receive(encode(signal, fec=False), lost)
    assert len(out) == 200 and path.decoded == 200 - len(lost)
    assert path.concealed == len(lost) and path.recovered == 0
    assert [c for _, c in out] == [i in lost for i in range(200)]
    assert all(len(s) == FRAME for s, _ in out)
    assert path.jitter.lost == len(lost)


def test_in_band_fec_recovers_lost_frames_better_than_concealment() -> None:
    signal = speech_like(200)
    lost = set(range(15, 200, 10))
    with_fec, out_fec = receive(encode(signal, fec=True), lost)
    without, out_plc = receive(encode(signal, fec=False), lost)
    assert with_fec.recovered == len(lost) and with_fec.concealed == 0
    assert without.recovered == 0 and without.concealed == len(lost)
    fec, plc = snr_db(out_fec, signal, True), snr_db(out_plc, signal, True)
    clean = snr_db(out_fec, signal, False)
    # FEC carries the lost frame's content; PLC can only extend the previous pitch
    assert fec > 6 and fec > plc + 6, (fec, plc, clean)
    # only the frame right before a packet comes from its FEC; the run before is concealed
    path, out = receive(encode(signal, fec=True), {50, 51, 52})
    assert path.concealed == 2 and path.recovered == 1 and len(out) == 200


def test_hostile_packets_neither_raise_nor_stop_decoding() -> None:
    packets = encode(speech_like(40), fec=False)
    path = AudioReceiver(Receiver())
    out: list[tuple[np.ndarray, bool]] = []
    path.sink = lambda samples, rate, concealed: out.append((samples, concealed))
    path.add(Packet(0, packets[0]))
    path.add(Packet(1, b"\xff" * 3))  # not Opus: libopus rejects it, it is concealed
    path.add(Packet(2, b""))  # empty payload: concealed
    path.add(Packet(3, packets[3]))
    path.add(Packet(90, packets[4]))  # 86 packets missing: at most MAX_CONCEAL concealed
    path.add(Packet(91, packets[5]))
    assert path._decoder is not None and path._decoder.errors == 1
    assert path.decoded == 4 and path.concealed == 2 + MAX_CONCEAL
    assert path.unconcealed == 86 - MAX_CONCEAL
    assert len(out) == 4 + 2 + MAX_CONCEAL and all(len(s) == FRAME for s, _ in out)
    path.add(Packet(92, b"\x00" * 1500))  # oversized garbage
    path.add(Packet(93, packets[6]))
    assert path.decoded == 5 and out[-1][1] is False and len(out) == 4 + 2 + MAX_CONCEAL + 2
    # a sink that raises is logged, not raised into aiortc's RTP handling
    path.sink = lambda *a: 1 / 0
    assert path.add(Packet(94, packets[7])) == (False, None)


def test_a_sender_skipping_sequence_numbers_cannot_buy_concealment_work() -> None:
    """Every packet 6 sequence numbers after the last would cost 5 concealed frames each:
    the budget (50 per second) caps it, the rest is counted as unconcealed."""
    packets = encode(speech_like(40), fec=False)
    path = AudioReceiver(Receiver())
    frames: list[bool] = []
    path.sink = lambda samples, rate, concealed: frames.append(concealed)
    for i in range(200):
        path.add(Packet(i * 6, packets[i % 40]))
    assert path.decoded == 200
    assert path.concealed <= CONCEAL_BURST + 5  # a few tokens refill while the loop runs
    assert path.concealed + path.unconcealed == path.jitter.lost == 199 * 5
    assert frames.count(True) == path.concealed


def test_other_codecs_go_to_aiortcs_decoder() -> None:
    path = AudioReceiver(Receiver())
    path.sink = lambda *a: pytest.fail("PCMU must not reach the Opus path")
    _, frame = path.add(Packet(0, b"\xff" * 160, payload_type=0))
    assert frame is not None and frame.data == b"\xff" * 160 and path.passed_on == 1
    path.add(Packet(1, b"", payload_type=77))  # a payload type nobody negotiated
    assert path.passed_on == 2 and path.decoded == 0


async def test_offer_inband_fec_in_sdp() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        sdp = (await pc.createOffer()).sdp
    finally:
        await pc.close()
    assert "useinbandfec" not in sdp
    out = offer_inband_fec(sdp)
    pt = next(line.split()[0].split(":")[1] for line in out.split("\r\n") if "opus/48000" in line)
    assert f"a=fmtp:{pt} useinbandfec=1" in out.split("\r\n")
    assert offer_inband_fec(out) == out
    browser = "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=0\r\n"
    assert offer_inband_fec(browser) == (
        "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    )


async def test_offer_inband_fec_in_every_audio_section() -> None:
    """Every audio m-section gets it (two audio tracks, a video between); other codecs with
    the same payload number in another section are left alone."""
    pc = RTCPeerConnection()
    try:
        for kind in ("audio", "video", "audio"):
            pc.addTransceiver(kind)
        sdp = (await pc.createOffer()).sdp
    finally:
        await pc.close()
    out = offer_inband_fec(sdp)
    sections = [s.split("\r\n") for s in out.split("\r\nm=")[1:]]
    assert [s[0].split()[0] for s in sections] == ["audio", "video", "audio"]
    for lines in sections[0], sections[2]:
        pts = [line.split()[0].split(":")[1] for line in lines if "opus/48000" in line]
        assert pts
        for pt in pts:
            fmtp = [line for line in lines if line.startswith(f"a=fmtp:{pt} ")]
            assert fmtp == [f"a=fmtp:{pt} useinbandfec=1"]
    assert "useinbandfec" not in "\r\n".join(sections[1])
    assert offer_inband_fec(out) == out

    def sdp_of(*parts: tuple[str, ...]) -> str:
        lines = [f"m={s[0]} 9 UDP/TLS/RTP/SAVPF 111\r\n" + "".join(f"{a}\r\n" for a in s[1:])
                 for s in parts]  # fmt: skip
        return "v=0\r\n" + "".join(lines)

    opus, fmtp, video = "a=rtpmap:111 opus/48000/2", "a=fmtp:111 ", "a=rtpmap:111 VP8/90000"
    hand = sdp_of(
        ("audio", opus, fmtp + "minptime=10"),
        ("audio", opus.replace("opus", "OPUS"), "a=mid:1"),
        ("video", video, fmtp + "max-fr=30"),
    )
    assert offer_inband_fec(hand) == sdp_of(
        ("audio", opus, fmtp + "minptime=10;useinbandfec=1"),
        ("audio", opus.replace("opus", "OPUS"), fmtp + "useinbandfec=1", "a=mid:1"),
        ("video", video, fmtp + "max-fr=30"),
    )


@pytest.mark.loopback
async def test_loss_in_a_real_call_is_concealed_at_the_signal_level(make_engine) -> None:
    """alice's tone reaches bob through 5 % simulated loss: every lost packet becomes a
    concealed frame about as loud as the tone, and bob's SDP asks alice for FEC."""
    alice, ra = await make_engine(
        "alice",
        audio_source=ToneSource(440, level_dbfs=-20),
        network=NetworkConditions(loss=0.05, seed=7),
    )
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    session, path = await audio_path(bob, "alice")
    deadline = time.monotonic() + 10
    frames: list[tuple[np.ndarray, bool]] = []
    forward = path.sink

    def sink(samples: np.ndarray, rate: int, concealed: bool) -> None:
        frames.append((samples, concealed))
        forward(samples, rate, concealed)

    path.sink = sink
    while path.concealed < 8 and time.monotonic() < deadline + 5:
        await asyncio.sleep(0.1)
    await alice.hangup()
    assert path.concealed >= 8, (path.concealed, path.jitter.lost)
    assert session.remote_audio is not None
    assert session.remote_audio.frames_concealed == path.concealed + path.recovered
    assert path.concealed + path.recovered == path.jitter.lost  # no gap left unfilled

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a.astype(float) ** 2)))

    clean = np.median([rms(s) for s, c in frames[25:] if not c])
    gaps = np.median([rms(s) for s, c in frames[25:] if c])
    assert abs(20 * np.log10(gaps / clean)) < 3, (gaps, clean)
    remote = session.pc.remoteDescription.sdp
    local = session.pc.localDescription.sdp
    assert "useinbandfec=1" in local and "useinbandfec=1" in remote
