"""Small helpers shared by the loopback tests."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callkit import PAYLOAD_KEYS, CallEngine, CallMediaType, CallParams
from callkit.media import icehooks
from callkit.media.encoding import EncoderPool
from callkit.media.opus import offer_inband_fec
from callkit.media.peer import PeerSession
from callkit.media.receiver import AudioReceiver
from callkit.media.tracks import LocalAudio
from callkit.media.volume import rms_dbfs
from callkit.recorder import EventRecorder
from callkit.testing import LOOPBACK, SDK_APP_ID, user_sig


async def quiet(seconds: float = 0.4) -> None:
    """Give late, unexpected events a chance to show up before sequences are compared."""
    await asyncio.sleep(seconds)


def assert_payload_keys(rec: EventRecorder) -> None:
    """Every payload a listener got has exactly the reference page's keys."""
    for e in rec.events:
        assert set(e.payload) == PAYLOAD_KEYS[e.event], (e.event, e.payload)


def recent_volume(rec: EventRecorder, user: str, n: int = 5) -> float:
    """Median of ``user``'s volume over the last ``n`` volume reports ``rec`` saw."""
    maps = [p["volumeMap"] for p in rec.of("onUserVoiceVolumeChanged")]
    return statistics.median(m[user] for m in maps[-n:])


async def ring(
    caller: CallEngine,
    callee_rec: EventRecorder,
    callee: str,
    media: CallMediaType = CallMediaType.AUDIO,
    params: CallParams | None = None,
) -> dict[str, Any]:
    """``caller`` calls ``callee``; returns the callee's onCallReceived payload."""
    await caller.call(callee, media, params)
    return await callee_rec.wait_for("onCallReceived")


async def connect(
    caller: CallEngine,
    caller_rec: EventRecorder,
    callee: CallEngine,
    callee_rec: EventRecorder,
    media: CallMediaType = CallMediaType.AUDIO,
) -> dict[str, Any]:
    """Ring, accept, and wait for the caller's onCallBegin (returned)."""
    assert callee.user_id is not None
    await ring(caller, callee_rec, callee.user_id, media)
    await callee.accept()
    return await caller_rec.wait_for("onCallBegin")


async def engine_at(
    urls: str | Sequence[str], user: str, **kwargs: Any
) -> tuple[CallEngine, EventRecorder]:
    """An engine for ``user`` logged in at ``urls`` (one URL or several nodes'), recorded."""
    engine = CallEngine(urls, ice_addresses=LOOPBACK, **kwargs)
    rec = EventRecorder(engine, user)
    await engine.init(SDK_APP_ID, user, user_sig(user))
    return engine, rec


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 50 ms; AssertionError naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def audio_path(
    engine: CallEngine, peer: str, timeout: float = 10.0
) -> tuple[PeerSession, AudioReceiver]:
    """``engine``'s media session with ``peer`` (waited for) and its audio receive path."""
    await wait_until(lambda: peer in engine.peers, f"a media session with {peer}", timeout)
    session = engine.peers[peer]
    path = session.audio_receiver
    assert path is not None and path.sink is not None, f"no audio receive path from {peer}"
    return session, path


class RawAudioPeer:
    """A raw aiortc answerer for one callkit audio sender: records the RTP packets it gets
    (``packets``: ssrc, sequence number, timestamp, audio-level header, payload; at most
    5,000) and the level of each frame it decodes (``levels``, dBFS; at most 2,000).
    ``stereo`` adds ``stereo=1`` to its Opus ``fmtp`` (RFC 7587: it asks for stereo);
    ``ask_fec`` adds ``useinbandfec=1`` (aiortc itself never asks for in-band FEC)."""

    def __init__(self, *, stereo: bool = False, ask_fec: bool = False) -> None:
        self.stereo = stereo
        self.ask_fec = ask_fec
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        icehooks.attach(self.pc, host_addresses=LOOPBACK)
        self.packets: list[tuple[int, int, int, Any, bytes]] = []
        self.levels: list[float] = []
        self.task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    @property
    def payloads(self) -> list[bytes]:
        """The Opus payloads received, in order."""
        return [p[4] for p in self.packets]

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while len(self.levels) < 2000:
                frame = await track.recv()
                self.levels.append(rms_dbfs(frame.to_ndarray()))
        except MediaStreamError:
            pass

    async def answer(self, offer: dict[str, Any]) -> dict[str, str]:
        """Take ``offer`` (``sdp``, ``type``) and return the answer, as signaling carries it."""
        await self.pc.setRemoteDescription(RTCSessionDescription(**offer))
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == "audio")
        handle = receiver._handle_rtp_packet

        async def keep(packet: Any, arrival_time_ms: int) -> None:
            if len(self.packets) < 5000:
                level = packet.extensions.audio_level
                self.packets.append(
                    (packet.ssrc, packet.sequence_number, packet.timestamp, level, packet.payload)
                )
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = keep
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp = self.pc.localDescription.sdp
        assert "useinbandfec" not in sdp  # aiortc itself never asks for FEC
        if self.stereo:
            lines = sdp.split("\r\n")
            i = next(i for i, line in enumerate(lines) if "opus/48000" in line)
            pt = lines[i].split(":")[1].split()[0]
            lines.insert(i + 1, f"a=fmtp:{pt} stereo=1")
            sdp = "\r\n".join(lines)
        return {"sdp": offer_inband_fec(sdp) if self.ask_fec else sdp, "type": "answer"}

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.pc.close()


async def raw_audio_sessions(
    local: LocalAudio, pool: EncoderPool, peers: list[RawAudioPeer]
) -> list[PeerSession]:
    """One offering callkit :class:`PeerSession` per raw peer, sending ``local`` through the
    shared encoders of ``pool``; each peer answers its offer."""
    sessions = []
    for i, peer in enumerate(peers):
        offers: list[dict[str, Any]] = []

        async def signal(kind: str, data: dict[str, Any], offers: list[Any] = offers) -> None:
            if kind == "offer":
                offers.append(data)

        session = PeerSession(
            f"raw{i}",
            offerer=True,
            signal=signal,
            local_audio=local,
            local_video=None,
            host_addresses=LOOPBACK,
            audio_encoders=pool,
        )
        sessions.append(session)
        await session.start()
        await session.handle_signal("answer", await peer.answer(offers[0]))
    return sessions
