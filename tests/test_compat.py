"""callkit.media._compat: targeted versions, aioice's TURN 438 handling against a real
coturn (on 127.0.0.1) whose nonces go stale after 1 s, and one test per replacement of an
aiortc / aioice internal proving it still takes effect (so an upgrade fails loudly)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aioice import turn
from aioice.ice import Connection
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    is_rtcp,
    pack_remb_fci,
)

from callkit import CallMediaType
from callkit.media import _compat, icehooks
from callkit.media._compat import TARGETS, version_mismatches
from callkit.media.encoding import EncoderPool, SenderEncoder
from callkit.media.jitter import AudioJitterBuffer
from callkit.media.netsim import NetworkConditions, NetworkShaper
from callkit.media.receiver import AudioReceiver
from callkit.media.rtcstats import install_rtcp_hooks, rtcp_log
from callkit.media.sources import TestPatternSource, ToneSource
from callkit.media.tracks import LocalAudio, LocalVideo
from callkit.media.videoreceiver import VideoReceiver
from callkit.media.volume import (
    FrameLevel,
    compute_audio_level_dbov,
    install_audio_level_hook,
    rms_dbfs,
)
from callkit.signaling.ice import turn_credentials

from .helpers import connect

SECRET = "compat-turn-secret"


def test_installed_versions_are_the_targeted_ones() -> None:
    assert set(TARGETS) == {"aiortc", "aioice"}
    assert version_mismatches() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn's turnserver is not installed (Debian package coturn; `make deb`)")
    port = _free_port()
    relay = 40000 + port % 20000
    (tmp_path / "turn.conf").write_text(
        f"listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n"
        f"min-port={relay}\nmax-port={relay + 20}\nuse-auth-secret\n"
        f"static-auth-secret={SECRET}\nrealm=compat.test\nfingerprint\nno-cli\nno-tls\n"
        "no-dtls\nallow-loopback-peers\nstale-nonce=1\n"
        f"userdb={tmp_path / 'turndb'}\nlog-file={tmp_path / 'turn.log'}\nno-stdout-log\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "turn.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # TCP on the same port opens with UDP
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            time.sleep(0.05)
        else:
            pytest.fail("coturn did not start within 10 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_channel_bind_after_the_nonce_went_stale(coturn: int) -> None:
    """Every ChannelBind after the first waits past the nonce lifetime: coturn answers 438
    with a new nonce, and the bind must still succeed (it fails without the 438 retry)."""
    loop = asyncio.get_running_loop()
    username, password = turn_credentials(SECRET, "alice", 600, time.time())
    transport, _ = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", coturn), username, password
    )
    inner = transport._TurnTransport__inner_protocol  # type: ignore[attr-defined]
    seen: list[int] = []
    orig_request = inner.request

    async def spy(request):  # type: ignore[no-untyped-def]
        try:
            return await orig_request(request)
        except Exception as exc:
            seen.append(getattr(getattr(exc, "response", None), "error_code", 0))
            raise

    inner.request = spy
    peers = []
    try:
        for _ in range(3):
            peer, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            peers.append(peer)
            await asyncio.sleep(1.3)
            await asyncio.wait_for(inner.send_data(b"x", peer.get_extra_info("sockname")), 5)
        assert list(inner.peer_to_channel.values()) == [0x4000, 0x4001, 0x4002]
        assert 438 in seen, f"coturn never sent a 438 (saw {seen}); the test proves nothing"
    finally:
        transport.close()
        for peer in peers:
            peer.close()
        await asyncio.sleep(0.2)


# ------------------------------------------------------------ one test per replacement


class _CountingShaper:
    """Duck-typed NetworkShaper: counts and forwards every datagram."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, transport: Any, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def _loopback_pair(shaper: Any = None, buffer: Any = None) -> AsyncIterator[tuple[Any, Any]]:
    """Two aiortc peers on 127.0.0.1 (gathered through the host-address hook), pc1 sending a
    tone to pc2 (through ``buffer`` if given); yields once both are connected (at most 10 s)."""
    pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    hole = MediaBlackhole()
    pc1.addTrack(AudioStreamTrack())
    pc2.on("track", hole.addTrack)
    try:
        icehooks.attach(pc1, host_addresses=["127.0.0.1"], shaper=shaper)
        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        if buffer is not None:
            _compat.use_jitter_buffer(pc2.getReceivers()[0], buffer)
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        await hole.start()
        deadline = time.monotonic() + 10
        while not pc1.connectionState == "connected" == pc2.connectionState:
            assert time.monotonic() < deadline, "loopback peers did not connect within 10 s"
            await asyncio.sleep(0.05)
        yield pc1, pc2
    finally:
        await hole.stop()
        await pc1.close()
        await pc2.close()


def _candidate_addresses(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def test_host_addresses_replacement_takes_effect() -> None:
    """aioice never gathers 127.0.0.1 by itself: only the hook can put it in the offer. This
    also proves ``ice_connection`` / ``pc_ice_transports`` find aiortc's Connection."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio")
        pc_transports = _compat.pc_ice_transports(pc)
        assert pc_transports
        assert all(isinstance(_compat.ice_connection(t), Connection) for t in pc_transports)
        icehooks.attach(pc, host_addresses=["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        assert _candidate_addresses(pc.localDescription.sdp) == ["127.0.0.1"]
        assert _compat.gathering_connection() is None  # only set while gathering
    finally:
        await pc.close()


async def test_datagram_transport_replacement_takes_effect() -> None:
    """Every datagram of a real call (ICE, DTLS, SRTP) leaves through the shaper; the
    nominated pair is read back through ``nominated_pairs``."""
    shaper = _CountingShaper()
    async with _loopback_pair(shaper) as (pc1, _):
        await asyncio.sleep(0.5)  # 25 audio frames
        assert shaper.sent > 25
        pairs = [p for c in icehooks.connections(pc1) for p in _compat.nominated_pairs(c)]
        assert pairs and pairs[0].local_addr[0] == "127.0.0.1"
        assert icehooks.selected_pairs(pc1) == [(pairs[0].local_addr, pairs[0].remote_addr)]


async def test_datagram_received_replacement_takes_effect() -> None:
    """What an ICE socket receives goes through its shaper's ``inbound`` one: 30 % loss there
    shows as packets the receiver's jitter buffer never got; a total cut stops them."""
    buffer = AudioJitterBuffer()
    async with _loopback_pair(buffer=buffer) as (_, pc2):
        shaper = NetworkShaper()
        icehooks.attach(pc2, host_addresses=["127.0.0.1"], shaper=shaper)
        shaper.set_inbound_conditions(NetworkConditions(loss=0.3, seed=2))
        inbound = shaper.inbound
        assert inbound is not None
        received = buffer.received
        await asyncio.sleep(1.0)
        got, dropped = buffer.received - received, inbound.dropped
        assert dropped > 5 and 0.15 < dropped / (got + dropped) < 0.45, (got, dropped)
        assert buffer.lost >= dropped - 2  # given up by the jitter buffer, as on a real network
        shaper.set_inbound_conditions(NetworkConditions(loss=1.0))
        await asyncio.sleep(0.1)
        received = buffer.received
        await asyncio.sleep(0.5)
        assert buffer.received == received
    assert shaper.sent > 0  # the outbound side went through the same shaper, untouched


async def test_relayed_candidate_replacement_takes_effect(coturn: int) -> None:
    """aiortc hands aioice its first TURN URL only; here that one has a wrong password, so a
    relay candidate can only come from the hook's second server (TCP, right password)."""
    username, password = turn_credentials(SECRET, "alice", 600, time.time())
    bad = RTCIceServer(f"turn:127.0.0.1:{coturn}?transport=udp", "alice", "wrong")
    good = RTCIceServer(f"turn:127.0.0.1:{coturn}?transport=tcp", username, password)
    assert _compat.parse_stun_turn_uri(good.urls)["transport"] == "tcp"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[bad]))
    try:
        pc.addTransceiver("audio")
        icehooks.attach(pc, host_addresses=["127.0.0.1"], turn=icehooks.turn_servers([bad, good]))
        await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 20)
        assert " typ relay" in pc.localDescription.sdp
    finally:
        await pc.close()


async def test_sender_rtcp_replacement_takes_effect() -> None:
    """The RTCP log gets the SRs a real sender sends (RTT needs them) and the report blocks
    about its own SSRC (``sender_ssrc``) that come back."""
    async with _loopback_pair() as (pc1, _):
        sender = pc1.getSenders()[0]
        ssrc = int(pc1.localDescription.sdp.split("a=ssrc:")[1].split()[0])
        assert _compat.sender_ssrc(sender) == ssrc
        log = rtcp_log(sender)
        blocks: list[Any] = []
        deadline = time.monotonic() + 10  # aiortc sends RTCP every 0.5-1.5 s
        while not (blocks and log.rtt_ms is not None) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            blocks += log.take_blocks()
        assert blocks, "no receiver-report block reached the RTCP log"
        assert log.rtt_ms is not None and 0 <= log.rtt_ms < 500


async def test_audio_level_replacement_takes_effect() -> None:
    """aiortc's sender takes the RTP audio level from our function: it trusts the frame's
    attached FrameLevel (42) although its samples are silence (aiortc's own says 127)."""
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 48000, 0, fractions.Fraction(1, 48000)
    frame.opaque = FrameLevel(42)
    install_audio_level_hook()

    class OneFrame(MediaStreamTrack):
        kind = "audio"

        async def recv(self) -> av.AudioFrame:
            return frame

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sender = pc.addTrack(OneFrame())
        opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
        encoded = await sender._next_encoded_frame(opus)
        assert encoded is not None and encoded.audio_level == -42
        assert _compat.AIORTC_COMPUTE_AUDIO_LEVEL_DBOV(frame) == -127
    finally:
        await pc.close()


def test_every_patch_is_installed_once() -> None:
    """Importing callkit.media installs every wrapper; installing again does not re-wrap."""
    import aiortc.rtp
    from aiortc.rtcrtpsender import RTCRtpSender

    def patched() -> list[Any]:
        return [
            aioice.ice.get_host_addresses,
            aioice.ice.Connection.gather_candidates,
            aioice.ice.StunProtocol.connection_made,
            aioice.ice.StunProtocol.datagram_received,
            aioice.ice.relayed_candidate,
            aioice.ice.Connection._prune_components,
            aioice.ice.Connection._remote_candidates_expected,
            aioice.ice.Connection.build_request,
            aioice.ice.Connection.check_complete,
            aioice.ice.Connection._check_list_maybe_fail,
            RTCRtpSender._send_rtcp,
            RTCRtpSender._handle_rtcp_packet,
        ]

    install_audio_level_hook()
    before = patched()
    assert all(getattr(fn, "_callkit_compat", False) for fn in before)
    icehooks.install()
    install_rtcp_hooks()
    install_audio_level_hook()
    assert patched() == before
    assert aiortc.rtp.compute_audio_level_dbov is compute_audio_level_dbov


async def test_jitter_buffer_replacement_takes_effect() -> None:
    """A real receiver reassembles its audio with the buffer it was given."""
    buffer = AudioJitterBuffer()
    async with _loopback_pair(buffer=buffer) as (_, pc2):
        receiver = pc2.getReceivers()[0]
        assert _compat.jitter_buffer(receiver) is buffer
        await asyncio.sleep(0.5)
        assert buffer.received > 10 and buffer.waiting() == 0
    with pytest.raises(RuntimeError, match="jitter_buffer"):
        _compat.use_jitter_buffer(object(), buffer)


@pytest.mark.loopback
async def test_callkit_audio_receivers_use_the_adaptive_jitter_buffer(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    for engine, other in ((alice, "bob"), (bob, "alice")):
        deadline = time.monotonic() + 10
        while other not in engine.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        session = engine.peers[other]
        audio = [t.receiver for t in session.pc.getTransceivers() if t.kind == "audio"]
        path = _compat.jitter_buffer(audio[0])
        assert isinstance(path, AudioReceiver) and path is session.audio_receiver
        while path.decoded < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # Opus is decoded in the loop: aiortc's decoder thread gets no frame at all
        assert path.jitter.received >= 10 and path.decoded >= 10 and path.passed_on == 0
        remote = session.remote_audio
        assert remote is not None and remote.frames_received >= path.decoded - 1
    await alice.hangup()


class _Unresolved:
    """An mDNS resolver that finds nothing, as for a browser on another link (and so that
    no multicast query leaves this host)."""

    async def resolve(self, hostname: str, timeout: float | None = 1.0) -> None:
        return None


def _mdns_only(sdp: str) -> str:
    """``sdp`` with every host candidate's address hidden behind an mDNS name, as browsers do;
    ``a=end-of-candidates`` stays."""
    lines = []
    for n, line in enumerate(sdp.split("\r\n")):
        parts = line.split()
        if line.startswith("a=candidate:") and parts[7] == "host":
            parts[4] = f"{n:08x}-0000-4000-8000-000000000000.local"
            line = " ".join(parts)
        lines.append(line)
    return "\r\n".join(lines)


@pytest.mark.parametrize("browser_offers", [True, False], ids=["browser-offers", "python-offers"])
async def test_mdns_only_candidates_and_end_marker_still_connect(
    monkeypatch: pytest.MonkeyPatch, browser_offers: bool
) -> None:
    """The "browser" (an aiortc peer whose SDP carries only mDNS host candidates and the end
    marker) reaches the Python peer only through a peer-reflexive pair. Without
    ``patch_mdns_end_of_candidates`` aioice 0.13 fails ICE on the Python side either way (as
    answerer it even gathers no candidate at all)."""

    async def resolver(subscriber: object) -> _Unresolved:
        return _Unresolved()

    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", resolver)
    icehooks.install()
    browser, python = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    offerer, answerer = (browser, python) if browser_offers else (python, browser)
    try:
        for pc in (browser, python):
            pc.addTrack(AudioStreamTrack())
        offer = await offerer.createOffer()
        icehooks.attach(offerer, host_addresses=["127.0.0.1"])
        await offerer.setLocalDescription(offer)
        sdp = offerer.localDescription.sdp
        await answerer.setRemoteDescription(
            RTCSessionDescription(_mdns_only(sdp) if browser_offers else sdp, "offer")
        )
        answer = await answerer.createAnswer()
        icehooks.attach(answerer, host_addresses=["127.0.0.1"])
        await answerer.setLocalDescription(answer)
        sdp = answerer.localDescription.sdp
        assert "typ host" in sdp and "a=end-of-candidates" in sdp
        await offerer.setRemoteDescription(
            RTCSessionDescription(sdp if browser_offers else _mdns_only(sdp), "answer")
        )
        deadline = time.monotonic() + 10
        while not browser.connectionState == "connected" == python.connectionState:
            assert python.connectionState != "failed", "ICE failed on the Python side"
            assert time.monotonic() < deadline, "not connected within 10 s"
            await asyncio.sleep(0.05)
        remote = [
            p.remote_candidate.type
            for c in icehooks.connections(python)
            for p in _compat.nominated_pairs(c)
        ]
        assert remote == ["prflx"]
    finally:
        await browser.close()
        await python.close()


# ------------------------------------------------------------------------ 8. shared encoder


class _Counting:
    """Counts the calls of an aiortc encoder class's ``encode`` (the real one runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
        self.calls = 0
        orig = cls.encode

        def encode(encoder: Any, *args: Any) -> Any:
            self.calls += 1
            return orig(encoder, *args)

        monkeypatch.setattr(cls, "encode", encode)


async def test_shared_encoder_replacement_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three real senders of one LocalAudio, each to its own peer over loopback: libopus
    runs once per frame (not three times), every receiver decodes the tone, and each sender
    keeps its own SSRC, sequence numbers and timestamps."""
    from callkit.media.opus import OpusEncoder

    counting = _Counting(monkeypatch, OpusEncoder)
    local = LocalAudio(ToneSource(440, -20))
    pool = EncoderPool()
    pairs: list[tuple[Any, Any]] = []
    received = [0, 0, 0]
    levels: list[list[float]] = [[], [], []]
    consumers: list[asyncio.Task[None]] = []

    async def consume(i: int, track: MediaStreamTrack) -> None:
        while True:
            frame = await track.recv()
            received[i] += 1
            levels[i].append(rms_dbfs(frame.to_ndarray()))

    try:
        for i in range(3):
            pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pairs.append((pc1, pc2))
            sender = pc1.addTrack(local.subscribe())
            pool.attach(sender)
            pc2.on(
                "track",
                lambda track, i=i: consumers.append(asyncio.ensure_future(consume(i, track))),
            )
            icehooks.attach(pc1, host_addresses=["127.0.0.1"])
            await pc1.setLocalDescription(await pc1.createOffer())
            await pc2.setRemoteDescription(pc1.localDescription)
            icehooks.attach(pc2, host_addresses=["127.0.0.1"])
            await pc2.setLocalDescription(await pc2.createAnswer())
            await pc1.setRemoteDescription(pc2.localDescription)
        deadline = time.monotonic() + 10
        while min(received) < 50:
            assert time.monotonic() < deadline, f"receivers got {received} frames in 10 s"
            await asyncio.sleep(0.05)
        (shared,) = pool.encoders
        sent = local.frames_sent
        assert counting.calls == shared.frames_encoded
        # at most once per frame produced, and far fewer encodes than frames received (an
        # encoder per sender would encode about once per frame received)
        assert counting.calls <= sent + 1, (counting.calls, sent)
        assert sum(received) >= 2 * counting.calls, (received, counting.calls)
        for got in levels:  # ToneSource -20 dBFS, after Opus's start-up frames
            assert abs(float(np.median(got[-20:])) + 20) < 1.5, got[-20:]
        senders = [pc1.getSenders()[0] for pc1, _ in pairs]
        assert len({_compat.sender_ssrc(s) for s in senders}) == 3
        assert all(_compat.shared_encoder(s).shared is shared for s in senders)
    finally:
        for task in consumers:
            task.cancel()
        for pc1, pc2 in pairs:
            await pc1.close()
            await pc2.close()
        await local.stop()


def _vp8_keyframe(payloads: list[bytes]) -> bool:
    """Whether VP8 RTP payloads (RFC 7741) start a keyframe: P bit 0 after the descriptor."""
    first = payloads[0]
    n = 1
    if first[0] & 0x80:  # X: extension byte
        ext = first[1]
        n = 2 + bool(ext & 0x80) * (2 if first[2] & 0x80 else 1) + bool(ext & 0x40)
        n += bool(ext & 0x30)
    return not first[n] & 0x01


async def test_shared_encoder_keyframes_and_bitrate_from_rtcp() -> None:
    """RTCP reaches the shared encoder through real senders: a PLI from one peer makes the
    next frame a keyframe for every sender, a new sender gets one too, and REMB from two peers
    leaves the encoder at the lower bitrate."""
    from aiortc.codecs.vpx import MAX_BITRATE, MIN_BITRATE

    pattern = TestPatternSource(320, 240, 30)
    frames = []
    for i in range(4):
        frame = pattern.read()
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        frames.append(frame)

    class Frames(MediaStreamTrack):  # the same frames, in order, for each sender
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.frames = iter(frames)

        async def recv(self) -> av.VideoFrame:
            return next(self.frames)

    pool = EncoderPool(keyframe_interval=0)
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    try:
        senders = [pc.addTrack(Frames()) for pc in pcs]
        handles = [pool.attach(s) for s in senders]
        assert pool.attach(senders[0]) is handles[0]  # idempotent
        first = [await senders[i]._next_encoded_frame(vp8) for i in (0, 1)]
        assert first[0] is not None and first[1] is not None
        assert _vp8_keyframe(first[0].payloads), "the first frame of a new sender is a keyframe"
        assert first[1].payloads is first[0].payloads, "both senders got the same encoding"
        (shared,) = pool.encoders
        assert shared.frames_encoded == 1
        plain = await senders[1]._next_encoded_frame(vp8)
        await senders[0]._next_encoded_frame(vp8)
        assert plain is not None and not _vp8_keyframe(plain.payloads)
        ssrc = _compat.sender_ssrc(senders[1])
        await senders[1]._handle_rtcp_packet(
            RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc)
        )
        after = [await s._next_encoded_frame(vp8) for s in senders]
        assert after[0] is not None and after[1] is not None
        assert _vp8_keyframe(after[0].payloads) and after[1].payloads is after[0].payloads
        assert shared.frames_encoded == 3 and shared.keyframes_forced == 2
        low, high = MIN_BITRATE + 50_000, MAX_BITRATE - 50_000
        for sender, bitrate in zip(senders, (high, low), strict=True):
            fci = pack_remb_fci(bitrate, [_compat.sender_ssrc(sender)])
            await sender._handle_rtcp_packet(
                RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=fci)
            )
        assert shared.target_bitrate == low
        handles[1].release()  # its peer left: the other one's request rules
        assert shared.target_bitrate == high
    finally:
        for pc in pcs:
            await pc.close()
    with pytest.raises(RuntimeError, match="_next_encoded_frame"):
        _compat.use_shared_encoder(object(), handles[0])  # type: ignore[arg-type]


async def test_a_pli_flood_from_one_peer_is_rate_limited_for_all() -> None:
    """Attack: one peer sends a PLI before every frame. The shared encoder forces at most one
    keyframe per KEYFRAME_INTERVAL, so the other peers keep getting delta frames; a request
    is deferred, not lost: the first frame after the interval is a keyframe."""
    pattern = TestPatternSource(160, 120, 30)
    frames = []
    for i in range(12):
        frame = pattern.read()
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        frames.append(frame)
    pool = EncoderPool(keyframe_interval=1.0)
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    try:
        handles = [pool.attach(pc.addTrack(AudioStreamTrack())) for pc in pcs]
        keys = []
        t0 = time.monotonic()
        for frame in frames[:10]:  # well within 1 s
            handles[1].request_keyframe()  # the flooding peer
            for handle in handles:
                encoded = await handle.encode(frame, vp8)
                assert encoded is not None
            keys.append(_vp8_keyframe(encoded[0]))
        assert time.monotonic() - t0 < 1.0, "too slow to test the limit"
        (shared,) = pool.encoders
        assert keys[0] and not any(keys[1:]), keys  # only the joining keyframe
        assert shared.keyframes_forced == 1
        await asyncio.sleep(1.0)
        encoded = await handles[0].encode(frames[10], vp8)
        assert encoded is not None and _vp8_keyframe(encoded[0]), "the deferred request was lost"
    finally:
        for pc in pcs:
            await pc.close()


# ------------------------------------------------------------ 10. direct pairs before relay


class _DirectCut:
    """Duck-typed NetworkShaper: drops every datagram to ``blocked`` addresses until
    ``until`` (monotonic; None: not started yet, so dropping), as a NAT that drops the first
    direct checks does; everything else (to the TURN relay) goes through."""

    def __init__(self) -> None:
        self.blocked: set[tuple[str, int]] = set()
        self.until: float | None = None
        self.dropped = 0

    def send(self, transport: Any, data: bytes, addr: Any = None) -> None:
        cutting = self.until is None or time.monotonic() < self.until
        if cutting and addr is not None and tuple(addr[:2]) in self.blocked:
            self.dropped += 1
            return
        transport.sendto(data, addr)


def _host_port(sdp: str) -> tuple[str, int]:
    for line in sdp.splitlines():
        parts = line.split()
        if line.startswith("a=candidate:") and parts[7] == "host":
            return parts[4], int(parts[5])
    raise AssertionError(f"no host candidate in {sdp}")


async def _call_through_turn(coturn: int, cut_for: float) -> tuple[list[str], float]:
    """Two aiortc peers on 127.0.0.1 with a TURN relay each (the coturn); the offerer (the
    controlling agent) cannot reach the answerer's host candidate for ``cut_for`` s, while
    the answerer's relay candidate answers at once. Returns the selected pair's types
    (offerer's local/remote, then the answerer's) and the connect time."""
    creds = [turn_credentials(SECRET, user, 600, time.time()) for user in ("alice", "bob")]
    pcs = [
        RTCPeerConnection(
            RTCConfiguration([RTCIceServer(f"turn:127.0.0.1:{coturn}", user, password)])
        )
        for user, password in creds
    ]
    pc1, pc2 = pcs
    cut = _DirectCut()
    try:
        for pc in pcs:
            pc.addTransceiver("audio")
        icehooks.attach(pc1, host_addresses=["127.0.0.1"], shaper=cut)
        await asyncio.wait_for(pc1.setLocalDescription(await pc1.createOffer()), 20)
        await pc2.setRemoteDescription(pc1.localDescription)
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await asyncio.wait_for(pc2.setLocalDescription(await pc2.createAnswer()), 20)
        assert " typ relay" in pc1.localDescription.sdp + pc2.localDescription.sdp
        cut.blocked.add(_host_port(pc2.localDescription.sdp))
        started = time.monotonic()
        cut.until = started + cut_for
        await pc1.setRemoteDescription(pc2.localDescription)
        while not pc1.connectionState == "connected" == pc2.connectionState:
            assert "failed" not in (pc1.connectionState, pc2.connectionState), "ICE failed"
            assert time.monotonic() < started + 15, "not connected within 15 s"
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        assert cut.dropped > 0, "no direct check was dropped: the test proves nothing"
        types = [
            f"{p.local_candidate.type}/{p.remote_candidate.type}"
            for pc in pcs
            for c in icehooks.connections(pc)
            for p in _compat.nominated_pairs(c)
        ]
        return types, took
    finally:
        for pc in pcs:
            await pc.close()


def _aioice_own_nomination(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice's own nomination for this test (icehooks.attach must not patch it again)."""
    monkeypatch.setattr(_compat, "patch_relay_nomination", lambda settle=0.0: None)
    for name in ("build_request", "check_complete", "_check_list_maybe_fail"):
        monkeypatch.setattr(Connection, name, getattr(Connection, name).__wrapped__)


@pytest.mark.parametrize("patched", [True, False], ids=["callkit", "aioice-own"])
async def test_direct_pair_wins_over_an_earlier_relay_pair(
    coturn: int, monkeypatch: pytest.MonkeyPatch, patched: bool
) -> None:
    """The direct check answers only at its second retransmission (1.5 s); the relay pair
    succeeded long before. aioice's own aggressive nomination selects the relay pair (the
    CI flake of test_nat.py case 1, reproduced); with ``patch_relay_nomination`` (settle
    raised to 5 s here so the timing is not a race) both sides select the direct pair."""
    icehooks.install()
    if patched:
        monkeypatch.setitem(_compat._hooks, "relay_settle", 5.0)
    else:
        _aioice_own_nomination(monkeypatch)
    types, took = await _call_through_turn(coturn, cut_for=1.0)
    if patched:
        assert types == ["host/host", "host/host"], types
        assert 1.0 < took < 5.0, took
    else:
        assert types and all("relay" in t for t in types), types


async def test_relay_only_still_connects_within_the_settle_time(coturn: int) -> None:
    """A direct pair that never answers (a hostile or unreachable peer) delays the relay
    pair's nomination by at most ``RELAY_SETTLE`` s: the call still connects, relayed."""
    icehooks.install()
    assert _compat._hooks["relay_settle"] == _compat.RELAY_SETTLE
    types, took = await _call_through_turn(coturn, cut_for=60.0)
    assert types and all("relay" in t for t in types), types
    assert took < _compat.RELAY_SETTLE + 3.0, took
    print(f"relay-only connect {took:.2f} s (settle {_compat.RELAY_SETTLE} s)")


def test_encoders_nobody_uses_are_dropped() -> None:
    """Attack: peers that come and go, each negotiating other codec settings, do not make
    the pool keep an encoder per variant: the last sender of an encoder to stop drops it."""
    pool = EncoderPool()
    shared_by_two = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
    a, b = SenderEncoder(pool), SenderEncoder(pool)
    assert pool.bind(a, shared_by_two) is pool.bind(b, shared_by_two)
    for i in range(50):
        variant = RTCRtpCodecParameters(
            mimeType="video/VP8", clockRate=90000, payloadType=97, parameters={"x": str(i)}
        )
        sender = SenderEncoder(pool)
        sender._shared = pool.bind(sender, variant)
        assert len(pool.encoders) == 2
        sender.release()
        sender.release()  # idempotent
    assert len(pool.encoders) == 1
    a._shared = b._shared = pool.encoders[0]
    a.release()
    assert len(pool.encoders) == 1  # b still sends with it
    b.release()
    assert pool.encoders == []


# ------------------------------------------------------------- 11. direct SRTP delivery


async def test_direct_srtp_delivery_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once asked, a DTLS transport gets every SRTP packet from its ICE socket directly (not
    through aioice's queue), and RTP is not tried as STUN first; the raw peer keeps aiortc's
    path. Media still flows through the same receiver."""
    from aioice import stun

    parsed_rtp = [0]
    parse = stun.parse_message

    def counting_parse(data: bytes, *args: Any, **kwargs: Any) -> Any:
        if data and 127 < data[0] < 192:
            parsed_rtp[0] += 1
        return parse(data, *args, **kwargs)

    monkeypatch.setattr(stun, "parse_message", counting_parse)
    buffer = AudioJitterBuffer()
    async with _loopback_pair(buffer=buffer) as (pc1, pc2):
        icehooks.deliver_directly(pc2)
        icehooks.deliver_directly(pc2)  # idempotent
        (dtls,) = icehooks.dtls_transports(pc2)
        direct = _compat.delivers_srtp_directly(dtls)
        assert direct is not None
        assert _compat.delivers_srtp_directly(icehooks.dtls_transports(pc1)[0]) is None
        received, handled = buffer.received, direct.handled
        parsed_rtp[0] = 0
        queued = [0]
        conn = _compat.ice_connection(dtls.transport)
        assert conn is not None
        put = conn._queue.put_nowait
        monkeypatch.setattr(
            conn._queue,
            "put_nowait",
            lambda item: (queued.__setitem__(0, queued[0] + 1), put(item)),
        )
        await asyncio.sleep(1.0)
        got = buffer.received - received
        assert got >= 25 and direct.handled - handled >= got, (got, direct.handled - handled)
        assert queued[0] == 0, "SRTP still went through aioice's queue"
        assert parsed_rtp[0] < 10, parsed_rtp[0]  # the raw peer's few RTCP reports only
        assert direct.errors == 0
        stats = await pc2.getStats()
        transport = [s for s in stats.values() if s.type == "transport"]
        assert transport and transport[0].packetsReceived >= got


# ------------------------------------------------------------------------------- 12. clock


def test_clock_replacement_takes_effect() -> None:
    """aiortc's clock functions are the time_ns ones once callkit.media.peer is imported, and
    give what aiortc's own (datetime-based) ones give."""
    import datetime

    import aiortc.clock

    import callkit.media.peer  # noqa: F401 - installs the patch

    _compat.patch_clock()  # idempotent
    assert getattr(aiortc.clock.current_ms, "_callkit_compat", False)
    assert getattr(aiortc.clock.current_ntp_time, "_callkit_compat", False)
    for _ in range(3):
        ntp = aiortc.clock.current_ntp_time()
        ms = aiortc.clock.current_ms()
        reference = aiortc.clock.datetime_to_ntp(datetime.datetime.now(datetime.UTC))
        assert abs(ntp - reference) < (1 << 32) // 100  # within 10 ms
        assert abs(ms - (reference * 1000 >> 32)) < 10
        back = aiortc.clock.datetime_from_ntp(ntp)
        assert abs((datetime.datetime.now(datetime.UTC) - back).total_seconds()) < 0.01


# -------------------------------------------------------------------- 13. lean audio RTP


@pytest.mark.loopback
async def test_lean_audio_rtp_replacement_takes_effect(make_engine) -> None:
    """callkit's Opus receivers get their RTP without aiortc's parser and receiver coroutine,
    and what aiortc's receiver would have recorded is still there: the statistics (getStats,
    receiver reports), the active SSRC (getSynchronizationSources), the decoded audio."""
    import datetime

    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    deadline = time.monotonic() + 10
    while "alice" not in bob.peers or bob.peers["alice"].audio_receiver is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    session = bob.peers["alice"]
    (receiver,) = [t.receiver for t in session.pc.getTransceivers() if t.kind == "audio"]
    lean = _compat.lean_audio_rtp(receiver)
    assert _compat.lean_audio_rtp(receiver) is lean  # idempotent
    path = session.audio_receiver
    while path.decoded < 25 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    handled, decoded = lean.handled, path.decoded
    await asyncio.sleep(1.0)
    assert lean.handled - handled >= 40, "the lean handler no longer gets the packets"
    assert path.decoded - decoded >= 40
    stats = [s for s in (await receiver.getStats()).values() if s.type == "inbound-rtp"]
    assert stats and stats[0].packetsReceived >= lean.handled - 5
    (source,) = receiver.getSynchronizationSources()
    age = datetime.datetime.now(datetime.UTC) - source.timestamp
    assert age.total_seconds() < 0.5
    with pytest.raises(RuntimeError, match="__active_ssrc"):
        _compat.lean_audio_rtp(object())


# ------------------------------------------------------------ 15. video decode in the loop


async def test_video_receiver_replacement_takes_effect() -> None:
    """A real aiortc video receiver hands its packets to callkit's VideoReceiver: frames are
    decoded there (in the loop, at 320x240), and aiortc's own decoder thread and track queue
    get none. Fails if aiortc stops calling the jitter buffer it was given."""
    video = LocalVideo(TestPatternSource(320, 240, fps=15))
    pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got: list[Any] = []
    try:
        pc1.addTrack(video.subscribe())
        icehooks.attach(pc1, host_addresses=["127.0.0.1"])
        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        receiver = pc2.getReceivers()[0]
        path = VideoReceiver(receiver, sink=got.append)
        _compat.use_video_receiver(receiver, path)
        assert _compat.jitter_buffer(receiver) is path
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        deadline = time.monotonic() + 15
        while len(got) < 10:
            assert time.monotonic() < deadline, f"{len(got)} video frames in 15 s"
            await asyncio.sleep(0.05)
        assert path.decoded_inline >= 10 and path.decoded_offloaded == 0
        assert {(f.width, f.height) for f in got} == {(320, 240)}
        assert _compat.decoder_backlog(receiver) == 0
        assert receiver.track._queue.qsize() == 0  # aiortc's track: nothing decoded for it
    finally:
        await pc1.close()
        await pc2.close()
        await video.stop()
    with pytest.raises(RuntimeError, match="video RTCRtpReceiver"):
        _compat.use_video_receiver(object(), path)
    path.close()


@pytest.mark.loopback
async def test_callkit_video_receivers_decode_without_aiortc_s_thread(make_engine) -> None:
    alice, ra = await make_engine("alice", video_source=TestPatternSource(320, 240, fps=15))
    bob, rb = await make_engine("bob", video_source=TestPatternSource(320, 240, fps=15))
    await connect(alice, ra, bob, rb, media=CallMediaType.VIDEO)
    for engine, other in ((alice, "bob"), (bob, "alice")):
        deadline = time.monotonic() + 15
        while other not in engine.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        session = engine.peers[other]
        video = [t.receiver for t in session.pc.getTransceivers() if t.kind == "video"]
        path = _compat.jitter_buffer(video[0])
        assert isinstance(path, VideoReceiver) and path is session.video_receiver
        while path.decoded < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert path.decoded_inline >= 10 and _compat.decoder_backlog(video[0]) == 0
        remote = session.remote_video
        assert remote is not None and remote.frames_received >= path.decoded - 1
        assert remote.last_size == (320, 240)
    await alice.hangup()


async def test_pushed_rtp_replacement_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """An audio sender attached to an EncoderPool gets its RTP task replaced (push_rtp): its
    subscriber track is never read, yet the raw aiortc receiver decodes the tone, and the
    packets written are the ones aiortc's own counters (RTCP SR, getStats) report, i.e. the
    private state the writer updates is still the one aiortc reads."""
    from callkit.media.tracks import _SubscriberTrack

    reads = 0
    recv = _SubscriberTrack.recv

    async def counting(track: _SubscriberTrack) -> Any:
        nonlocal reads
        reads += 1
        return await recv(track)

    monkeypatch.setattr(_SubscriberTrack, "recv", counting)
    local = LocalAudio(ToneSource(440, -20))
    pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    levels: list[float] = []
    consumers: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            levels.append(rms_dbfs((await track.recv()).to_ndarray()))

    try:
        sender = pc1.addTrack(local.subscribe())
        EncoderPool().attach(sender)
        pc2.on("track", lambda track: consumers.append(asyncio.ensure_future(consume(track))))
        icehooks.attach(pc1, host_addresses=["127.0.0.1"])
        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        deadline = time.monotonic() + 10
        while len(levels) < 40:
            assert time.monotonic() < deadline, f"the receiver decoded {len(levels)} frames"
            await asyncio.sleep(0.05)
        writer = _compat.rtp_writer(sender)
        assert writer is not None and writer.packets >= 40 and reads == 0
        # the bytes written are aiortc's own serialization of the packet kept for NACK
        sent_rtp: list[bytes] = []
        send_rtp = sender.transport._send_rtp

        async def keep(data: bytes) -> None:
            sent_rtp.append(data)
            await send_rtp(data)

        sender.transport._send_rtp = keep
        while len(sent_rtp) < 5:
            await asyncio.sleep(0.02)
        history = sender._RTCRtpSender__rtp_history
        extensions = sender._RTCRtpSender__rtp_header_extensions_map
        for data in sent_rtp[:3]:
            if not is_rtcp(data):
                seq = int.from_bytes(data[2:4], "big")
                assert history[seq % RTP_HISTORY_SIZE].serialize(extensions) == data
        stats = await sender.getStats()
        sent = next(s for s in stats.values() if s.type == "outbound-rtp")
        assert sent.packetsSent == writer.packets
        assert abs(float(np.median(levels[-20:])) + 20) < 1.5, levels[-20:]
    finally:
        for task in consumers:
            task.cancel()
        await pc1.close()
        await pc2.close()
        await local.stop()
