"""The pushed audio send path (callkit.media.encoding, _compat.push_rtp, tracks.AudioChunk):
each tick of a LocalAudio is encoded once per codec setting with libopus and written into
every callkit sender at once, checked at raw aiortc receivers over loopback (SSRC, sequence
numbers, timestamps, audio level, mono or stereo packets, decoded level), and attacked with a
sender whose transport fails."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, is_rtcp

from callkit.media import _compat
from callkit.media.encoding import EncoderPool
from callkit.media.opus import OpusDecoder, OpusEncoder, OpusError
from callkit.media.peer import PeerSession
from callkit.media.sources import ToneSource
from callkit.media.tracks import AudioChunk, LocalAudio, _SubscriberTrack
from callkit.media.volume import rms_dbfs

from .helpers import RawAudioPeer, raw_audio_sessions

FRAME = 960


def _tone(level_dbfs: float, n: int = FRAME * 60) -> np.ndarray:
    t = np.arange(n) / 48000
    return (10 ** (level_dbfs / 20) * 32767 * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype(
        np.int16
    )


def _stereo_packet(payload: bytes) -> bool:
    """The Opus TOC byte's stereo flag (RFC 6716 section 3.1)."""
    return bool(payload[0] & 0x04)


# ------------------------------------------------------------------------------ the encoder


@pytest.mark.parametrize("channels", [1, 2])
def test_opus_encoder_round_trip_keeps_the_level(channels: int) -> None:
    """libopus called directly: a -20 dBFS tone comes back at -20 dBFS from a stereo decoder,
    whether encoded mono or stereo, in packets of the requested channel count."""
    encoder, decoder = OpusEncoder(channels), OpusDecoder()
    x = _tone(-20.0)
    out = []
    for i in range(0, x.size, FRAME):
        packet = encoder.encode(x[i : i + FRAME])
        assert _stereo_packet(packet) == (channels == 2)
        samples = decoder.decode(packet)
        assert samples is not None and samples.shape == (FRAME, 2)
        out.append(samples)
    assert encoder.frames == x.size // FRAME
    assert abs(rms_dbfs(np.concatenate(out[10:])) + 20.0) < 0.5


def test_opus_encoder_in_band_fec_only_when_asked() -> None:
    from callkit.media.opus import libopus

    lib = libopus()
    rng = np.random.default_rng(3)
    voice = [
        (8000 * np.sin(2 * np.pi * rng.uniform(200, 1500) * np.arange(FRAME) / 48000)).astype(
            np.int16
        )
        for _ in range(50)
    ]
    with_fec, plain = OpusEncoder(1, fec=True, packet_loss=7), OpusEncoder(1)
    lbrr = [lib.opus_packet_has_lbrr(p, len(p)) for p in map(with_fec.encode, voice)]
    none = [lib.opus_packet_has_lbrr(p, len(p)) for p in map(plain.encode, voice)]
    assert sum(lbrr) > 25 and sum(none) == 0


def test_opus_encoder_rejects_bad_input_clearly() -> None:
    encoder = OpusEncoder(1)
    with pytest.raises(ValueError, match="int16"):
        encoder.encode(np.zeros(FRAME, dtype=np.float32))
    with pytest.raises(ValueError, match="not an Opus frame size"):
        encoder.encode(np.zeros(1000, dtype=np.int16))
    with pytest.raises(ValueError, match="expected 1 channels"):
        encoder.encode(np.zeros((FRAME, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        OpusEncoder(3)
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(1, bitrate=10)
    encoder.close()
    with pytest.raises(OpusError, match="closed"):
        encoder.encode(np.zeros(FRAME, dtype=np.int16))


# ---------------------------------------------------------------------- raw aiortc receivers


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _sender(session: PeerSession) -> Any:
    return next(t.sender for t in session.pc.getTransceivers() if t.kind == "audio")


@pytest.mark.loopback
async def test_pushed_audio_reaches_raw_aiortc_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source, three raw aiortc peers (one asks for stereo): each gets its sender's SSRC,
    consecutive sequence numbers, timestamps 960 apart and the frame's audio level; mono
    packets unless asked for stereo; -20 dBFS decoded; libopus runs once per tick and codec
    setting; no av.AudioFrame is made, no subscriber track is read, no queue holds a frame."""
    made = {"frames": 0, "recv": 0, "encode": 0}
    to_frame, recv, encode = AudioChunk.to_frame, _SubscriberTrack.recv, OpusEncoder.encode

    def counting_to_frame(chunk: AudioChunk) -> Any:
        made["frames"] += 1
        return to_frame(chunk)

    async def counting_recv(track: _SubscriberTrack) -> Any:
        made["recv"] += 1
        return await recv(track)

    def counting_encode(encoder: OpusEncoder, samples: np.ndarray) -> bytes:
        made["encode"] += 1
        return encode(encoder, samples)

    monkeypatch.setattr(AudioChunk, "to_frame", counting_to_frame)
    monkeypatch.setattr(_SubscriberTrack, "recv", counting_recv)
    monkeypatch.setattr(OpusEncoder, "encode", counting_encode)
    local = LocalAudio(ToneSource(440, -20))
    pool = EncoderPool()
    peers = [RawAudioPeer(), RawAudioPeer(), RawAudioPeer(stereo=True)]
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(local, pool, peers)
        await _until(lambda: all(len(p.levels) >= 60 for p in peers), "60 frames at each peer")
        assert made["frames"] == made["recv"] == 0
        ticks = local.frames_sent
        assert sorted(e.opus_channels for e in pool.encoders) == [1, 2]
        assert made["encode"] == sum(e.frames_encoded for e in pool.encoders) <= 2 * ticks + 2
        for session, peer in zip(sessions, peers, strict=True):
            sender = _sender(session)
            ssrcs = {p[0] for p in peer.packets}
            assert ssrcs == {_compat.sender_ssrc(sender)}
            seqs = [p[1] for p in peer.packets]
            timestamps = [p[2] for p in peer.packets]
            # loopback UDP may reorder nothing here: every step is +1 and +960
            assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
            assert all((b - a) % 2**32 == FRAME for a, b in itertools.pairwise(timestamps))
            assert {p[3] for p in peer.packets[5:]} == {(False, 20)}  # -20 dBov, RFC 6464
            stereo = {_stereo_packet(p[4]) for p in peer.packets}
            assert stereo == {peer.stereo}
            assert abs(float(np.median(peer.levels[-20:])) + 20) < 1.0, peer.levels[-20:]
            stats = await sender.getStats()
            sent = next(s for s in stats.values() if s.type == "outbound-rtp")
            assert sent.packetsSent >= len(peer.packets)  # aiortc's SR counters follow
        ssrc_all = {p.packets[0][0] for p in peers}
        assert len(ssrc_all) == 3
    finally:
        for session in sessions:
            await session.close()
        for peer in peers:
            await peer.close()
        await local.stop()


@pytest.mark.loopback
async def test_a_sender_whose_transport_fails_stops_alone() -> None:
    """Attack on the shared path: one peer's sender raises on every packet (a hostile or
    broken transport). Only that sender ends (its track stopped, unsubscribed); the other
    peers keep getting every frame from the one shared encode."""
    local = LocalAudio(ToneSource(440, -20))
    pool = EncoderPool()
    peers = [RawAudioPeer(), RawAudioPeer(), RawAudioPeer()]
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(local, pool, peers)
        await _until(lambda: all(len(p.packets) >= 20 for p in peers), "20 packets each")
        broken = _sender(sessions[0])
        send_rtp = broken.transport._send_rtp
        calls = 0

        async def hostile(data: bytes) -> None:
            nonlocal calls
            if is_rtcp(data):  # RTCP (the BYE when it stops) still goes out
                await send_rtp(data)
                return
            calls += 1
            raise OSError("hostile transport")

        broken.transport._send_rtp = hostile
        await _until(lambda: _compat.rtp_writer(broken) is None, "the broken sender to stop")
        assert calls == 1 and broken.track is None and local.subscriber_count == 2
        before = [len(p.packets) for p in peers]
        encoded = sum(e.frames_encoded for e in pool.encoders)
        await asyncio.sleep(1.0)
        after = [len(p.packets) for p in peers]
        assert after[0] == before[0]
        assert all(a - b >= 40 for a, b in zip(after[1:], before[1:], strict=True)), (before, after)
        assert sum(e.frames_encoded for e in pool.encoders) - encoded <= 55  # once per tick
    finally:
        for session in sessions:
            await session.close()
        for peer in peers:
            await peer.close()
        await local.stop()


@pytest.mark.loopback
async def test_push_follows_mute_pause_replace_and_close() -> None:
    """A pushed sender behaves as aiortc's: muted -> silence packets; a paused subscriber
    sends nothing, then resumes with the next sequence number; replaced by another source's
    track it sends that source on the same SSRC; replaced by a raw aiortc track it reads
    frames from it; closing the connection ends the sender and its track."""
    quiet, loud = LocalAudio(ToneSource(440, -40)), LocalAudio(ToneSource(440, -10))
    pool = EncoderPool()
    peer = RawAudioPeer()
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(quiet, pool, [peer])
        (session,) = sessions
        sender = _sender(session)
        await _until(lambda: len(peer.packets) >= 15, "15 packets")
        assert peer.packets[-1][3] == (False, 40)
        quiet.muted = True
        await _until(lambda: peer.packets[-1][3] == (False, 127), "silence packets")
        quiet.muted = False
        track = sender.track
        quiet.pause(track)
        await asyncio.sleep(0.1)
        n = len(peer.packets)
        await asyncio.sleep(0.3)
        assert len(peer.packets) == n  # paused: nothing at all
        quiet.pause(track, False)
        await _until(lambda: len(peer.packets) > n + 3, "packets after resuming")
        assert (peer.packets[n][1] - peer.packets[n - 1][1]) % 65536 == 1
        assert (peer.packets[n][2] - peer.packets[n - 1][2]) % 2**32 >= 0.3 * 48000
        sender.replaceTrack(loud.subscribe())
        await _until(lambda: peer.packets[-1][3] == (False, 10), "the other source's level")
        assert track.readyState == "live"  # the old track was not ended by the switch
        quiet.unsubscribe(track)
        sender.replaceTrack(AudioStreamTrack())  # aiortc's own silence: read, not pushed
        n = len(peer.packets)
        await _until(lambda: len(peer.packets) > n + 10, "packets from a raw aiortc track")
        ssrcs = {p[0] for p in peer.packets}
        assert ssrcs == {_compat.sender_ssrc(sender)}
        seqs = [p[1] for p in peer.packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
        sender.replaceTrack(loud.subscribe())
        await _until(lambda: peer.packets[-1][3] == (False, 10), "pushing again")
        pushed = sender.track
        await session.close()
        assert _compat.rtp_writer(sender) is None
        assert pushed.readyState == "ended" and loud.subscriber_count == 1
    finally:
        for session in sessions:
            await session.close()
        await peer.close()
        await quiet.stop()
        await loud.stop()


@pytest.mark.loopback
async def test_a_suspending_send_keeps_packet_order() -> None:
    """A send that suspends (a first packet through TURN waits for its ChannelBind) finishes
    in a task and the packets pushed meanwhile leave after it, in order, none lost."""
    local = LocalAudio(ToneSource(440, -20))
    peer = RawAudioPeer()
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(local, EncoderPool(), [peer])
        await _until(lambda: len(peer.packets) >= 10, "10 packets")
        sender = _sender(sessions[0])
        send_rtp = sender.transport._send_rtp
        slow = 1

        async def suspending(data: bytes) -> None:
            nonlocal slow
            if slow and not is_rtcp(data):
                slow = 0
                await asyncio.sleep(0.1)  # about five ticks
            await send_rtp(data)

        sender.transport._send_rtp = suspending
        n = len(peer.packets)
        await _until(lambda: len(peer.packets) >= n + 20, "20 packets after the slow one")
        seqs = [p[1] for p in peer.packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs)), seqs[n - 2 :]
        writer = _compat.rtp_writer(sender)
        assert slow == 0 and writer is not None and writer.dropped == 0 and writer.error is None
    finally:
        for session in sessions:
            await session.close()
        await peer.close()
        await local.stop()


@pytest.mark.loopback
async def test_renegotiated_settings_switch_encoders_without_a_jump() -> None:
    """A peer whose new description asks for stereo and in-band FEC moves its sender to
    another shared encoder at the next tick: its packets turn stereo with LBRR, sequence
    numbers and timestamps go on without a jump, and the encoder nobody uses any more is
    dropped (a peer toggling its settings cannot make the pool grow)."""
    local = LocalAudio(ToneSource(440, -20))
    pool = EncoderPool()
    peer = RawAudioPeer()
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(local, pool, [peer])
        await _until(lambda: len(peer.packets) >= 10, "10 packets")
        assert not _stereo_packet(peer.packets[-1][4])
        sender = _sender(sessions[0])
        handle = _compat.shared_encoder(sender)
        writer = _compat.rtp_writer(sender)
        assert writer is not None
        both = frozenset({writer.codec.payloadType})
        for round_ in range(6):  # toggle: stereo + FEC, then back to what the answer said
            n = len(peer.packets)
            handle.set_remote_fec(both, both if round_ % 2 == 0 else frozenset())
            await _until(lambda n=n: len(peer.packets) >= n + 5, "5 more packets")
            (encoder,) = pool.encoders
            assert encoder.inband_fec  # the raw peer's answer asked for none: ours does here
            assert encoder.opus_channels == (2 if round_ % 2 == 0 else 1)
            assert _stereo_packet(peer.packets[-1][4]) == (round_ % 2 == 0)
        seqs = [p[1] for p in peer.packets]
        timestamps = [p[2] for p in peer.packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
        assert all((b - a) % 2**32 == FRAME for a, b in itertools.pairwise(timestamps))
    finally:
        for session in sessions:
            await session.close()
        await peer.close()
        await local.stop()


@pytest.mark.loopback
async def test_a_nack_flood_gets_a_bounded_number_of_retransmissions() -> None:
    """Attack on the shared loop: a peer sends 200 RTCP NACKs, each naming the last 17
    packets. aiortc would retransmit every one it still has (about 3,400 packets at once);
    a pushed sender retransmits at most MAX_RETRANSMITS_PER_S per second and ignores the
    rest, and its stream goes on."""
    local = LocalAudio(ToneSource(440, -20))
    peer = RawAudioPeer()
    sessions: list[PeerSession] = []
    try:
        sessions = await raw_audio_sessions(local, EncoderPool(), [peer])
        await _until(lambda: len(peer.packets) >= 30, "30 packets")
        sender = _sender(sessions[0])
        seen = {p[1] for p in peer.packets}
        retransmitted = 0
        send_rtp = sender.transport._send_rtp

        async def counting(data: bytes) -> None:
            nonlocal retransmitted
            if not is_rtcp(data):
                seq = int.from_bytes(data[2:4], "big")
                retransmitted += seq in seen
                seen.add(seq)
            await send_rtp(data)

        sender.transport._send_rtp = counting
        receiver = next(t.receiver for t in peer.pc.getTransceivers() if t.kind == "audio")
        ssrc = _compat.sender_ssrc(sender)
        last = peer.packets[-1][1]
        started, n = time.monotonic(), len(peer.packets)
        for _ in range(200):
            nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1234, media_ssrc=ssrc)
            nack.lost = [(last - 16 + i) % 65536 for i in range(17)]  # ascending
            await receiver._send_rtcp(nack)
        await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        bound = _compat.MAX_RETRANSMITS_PER_S * (1 + elapsed)
        assert 0 < retransmitted <= bound, (retransmitted, bound)
        assert _compat.rtp_writer(sender) is not None  # the stream goes on
        await _until(lambda: len(peer.packets) >= n + 20, "the stream after the flood")
    finally:
        for session in sessions:
            await session.close()
        await peer.close()
        await local.stop()
