"""PeerSession: the one module that talks to aiortc's RTCPeerConnection.

One session per remote participant (full mesh). The participant who joined later is the
*offerer* of the pair and the only side that ever creates offers, so there is no glare:
the answerer asks for a new offer with a ``renegotiate`` signal instead. aiortc gathers all
candidates before ``setLocalDescription`` returns, so an SDP carries its candidates; a peer
that trickles (a browser) sends more with ``candidate`` signals (:meth:`add_candidate`).

Every session negotiates one audio and one video transceiver. The video transceiver sends
(``sendrecv``) only while this side sends video; otherwise it is ``recvonly``, so switching
an audio call to video (or back) is a real SDP renegotiation, and closing the camera
detaches the track so no video packets leave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    clock,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from . import _compat, icehooks
from .encoding import EncoderPool, SenderEncoder, inband_fec, opus_stereo
from .netsim import NetworkShaper
from .opus import offer_inband_fec
from .qualitymonitor import PeerSample
from .receiver import AudioReceiver
from .rtcstats import rtcp_log, snapshot_from_report
from .tracks import LocalAudio, LocalVideo, RemoteAudio, RemoteVideo
from .videoreceiver import VideoReceiver

log = logging.getLogger("callkit.media.peer")

_compat.patch_clock()  # aiortc's per-packet clock reads, from time_ns (see _compat, 12.)

#: a peer connection that is not "connected" this long after the offer/answer is "failed"
CONNECT_TIMEOUT = 10.0

#: trickled candidates kept while no remote description is set (more are dropped)
MAX_PENDING_CANDIDATES = 64
#: trickled candidates applied per peer connection in all (more are dropped): each one makes
#: the engine send connectivity checks to the address it names
MAX_TRICKLED_CANDIDATES = 64
#: longest candidate line accepted (a real one is under 200 characters)
MAX_CANDIDATE_CHARS = 512

Signal = Callable[[str, dict[str, Any]], Awaitable[None]]

#: preference when naming a pair's type: the "most indirect" end decides
_PAIR_TYPES = ("relay", "prflx", "srflx", "host")


def ice_servers_from_json(entries: Any) -> list[RTCIceServer]:
    """aiortc ``RTCIceServer`` s from a login reply's ``iceServers`` (RTCIceServer JSON:
    ``{urls, username?, credential?}``); malformed entries are skipped, at most 8 kept."""
    servers: list[RTCIceServer] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls")
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            continue
        username, credential = entry.get("username"), entry.get("credential")
        if not isinstance(username, (str, type(None))) or not isinstance(
            credential, (str, type(None))
        ):
            continue
        servers.append(RTCIceServer(urls=urls[:8], username=username, credential=credential))
    return servers[:8]


@dataclass(frozen=True)
class SelectedPair:
    """The ICE candidate pair media flows on (see :meth:`PeerSession.selected_pair`)."""

    #: ``relay`` if either end is a TURN relay, else ``prflx``, ``srflx`` or ``host``
    type: str
    local_type: str
    remote_type: str
    local_address: tuple[str, int]
    remote_address: tuple[str, int]
    #: round-trip time from RTCP (ms), None before the first measurement
    rtt_ms: float | None


class PeerSession:
    """Media to and from one remote user.

    ``signal(kind, data)`` sends ``offer`` / ``answer`` / ``renegotiate`` to the remote side;
    the owner feeds what comes back into :meth:`handle_signal`.
    """

    def __init__(
        self,
        remote_user: str,
        *,
        offerer: bool,
        signal: Signal,
        local_audio: LocalAudio,
        local_video: LocalVideo | None,
        send_video: bool = False,
        ice_servers: list[RTCIceServer] | None = None,
        host_addresses: list[str] | None = None,
        shaper: NetworkShaper | None = None,
        on_failed: Callable[["PeerSession", str], None] | None = None,
        on_audio_frame: Callable[[str, Any, int], None] | None = None,
        on_video_frame: Callable[[str, Any], None] | None = None,
        audio_encoders: EncoderPool | None = None,
        video_encoders: EncoderPool | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self.remote_user = remote_user
        #: seconds the connection may take to reach "connected" before it counts as failed
        self.connect_timeout = float(connect_timeout)
        self.offerer = offerer
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self._turn = icehooks.turn_servers(list(ice_servers or []))
        self._pending_candidates: list[dict[str, Any]] = []
        self._trickled = 0
        self._signal = signal
        self._local_audio = local_audio
        self._local_video = local_video
        self._send_video = send_video and local_video is not None
        self._host_addresses = host_addresses
        self._shaper = shaper
        self._on_failed = on_failed
        self._on_audio_frame = on_audio_frame
        self._on_video_frame = on_video_frame
        self._audio_encoders = audio_encoders
        self._video_encoders = video_encoders
        self._encoder_handles: list[Any] = []
        self._audio_track: MediaStreamTrack | None = None
        self._video_track: MediaStreamTrack | None = None
        self.remote_audio: RemoteAudio | None = None
        self.remote_video: RemoteVideo | None = None
        self._audio_receiver: AudioReceiver | None = None
        self._video_receiver: VideoReceiver | None = None
        self.failed = False
        self.connected = asyncio.Event()
        self.negotiations = 0
        """Completed offer/answer exchanges (1 after the first; more after renegotiation)."""
        self._lock = asyncio.Lock()
        self._awaiting_answer = False
        self._again = False
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------------ local media

    @property
    def sending_video(self) -> bool:
        """True while our video transceiver is sendrecv with a track attached."""
        return self._send_video

    def _video_direction(self) -> str:
        return "sendrecv" if self._send_video else "recvonly"

    def _attach_tracks(self) -> None:
        """Put our tracks and directions on the transceivers (creating them as offerer; an
        answerer uses those the offer made).

        The video track, once made, stays attached for the session's life: aiortc's sender
        loop ends for good when its track ends, so "not sending video" pauses the track.
        """
        if self._audio_track is None:
            self._audio_track = self._local_audio.subscribe()
        if self._send_video and self._video_track is None:
            assert self._local_video is not None
            self._video_track = self._local_video.subscribe()
        if self._video_track is not None and self._local_video is not None:
            self._local_video.pause(self._video_track, not self._send_video)
        audio_t = video_t = None
        for t in self.pc.getTransceivers():
            if t.kind == "audio" and audio_t is None:
                audio_t = t
            elif t.kind == "video" and video_t is None:
                video_t = t
        # the answerer has exactly the offer's m-lines: it may not add one (aiortc fails on
        # it), so a kind the offer lacks (an audio-only offer) is neither sent nor received
        if audio_t is None and self.offerer:
            audio_t = self.pc.addTransceiver("audio", direction="sendrecv")
        if video_t is None and self.offerer:
            video_t = self.pc.addTransceiver("video", direction=self._video_direction())
        if audio_t is not None:
            audio_t.direction = "sendrecv"
            self._share_encoder(audio_t.sender, self._audio_encoders)
            if not isinstance(_compat.jitter_buffer(audio_t.receiver), AudioReceiver):
                self._audio_receiver = AudioReceiver(audio_t.receiver)
                self._audio_receiver.sink = self._feed_audio
                _compat.use_jitter_buffer(audio_t.receiver, self._audio_receiver)
                _compat.lean_audio_rtp(audio_t.receiver)
            if audio_t.sender.track is not self._audio_track:
                audio_t.sender.replaceTrack(self._audio_track)
        if video_t is not None:
            video_t.direction = self._video_direction()
            self._share_encoder(video_t.sender, self._video_encoders)
            if not isinstance(_compat.jitter_buffer(video_t.receiver), VideoReceiver):
                self._video_receiver = VideoReceiver(video_t.receiver, sink=self._feed_video)
                _compat.use_video_receiver(video_t.receiver, self._video_receiver)
            if self._video_track is not None and video_t.sender.track is not self._video_track:
                video_t.sender.replaceTrack(self._video_track)

    def _share_encoder(self, sender: Any, pool: EncoderPool | None) -> None:
        """Encode through ``pool`` (shared with the other sessions of this source)."""
        if pool is not None:
            handle = pool.attach(sender)
            if handle not in self._encoder_handles:
                self._encoder_handles.append(handle)

    def _release_video(self) -> None:
        if self._video_track is not None and self._local_video is not None:
            self._local_video.unsubscribe(self._video_track)
        self._video_track = None

    async def set_send_video(self, send: bool, local_video: LocalVideo | None = None) -> None:
        """Start or stop sending video and renegotiate (media type switch)."""
        if local_video is not None and self._local_video is None:
            self._local_video = local_video
        send = send and self._local_video is not None
        if send == self._send_video:
            return
        self._send_video = send
        await self.renegotiate()

    # ------------------------------------------------------------------ negotiation

    async def start(self) -> None:
        """As offerer: send the first offer."""
        await self.renegotiate()

    async def renegotiate(self) -> None:
        """Offerer: send a new offer (after the pending answer). Answerer: ask for one."""
        if self._closed:
            return
        if not self.offerer:
            await self._signal("renegotiate", {})
            return
        async with self._lock:
            if self._awaiting_answer:
                self._again = True
                return
            self._attach_tracks()
            offer = await self.pc.createOffer()
            self._hook()
            await self.pc.setLocalDescription(_with_fec(offer))
            self._awaiting_answer = True
            self._start_watchdog()
            desc = _desc(self.pc.localDescription)
        await self._signal("offer", desc)

    async def handle_signal(self, kind: str, data: dict[str, Any]) -> None:
        """Apply an ``offer`` / ``answer`` / ``renegotiate`` / ``candidate`` from the remote
        side."""
        if self._closed:
            return
        if kind == "candidate":
            await self.add_candidate(data)
        elif kind == "offer":
            async with self._lock:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=data["sdp"], type=data["type"])
                )
                await self._apply_pending_candidates()
                self._attach_tracks()
                self._apply_remote_fec()
                answer = await self.pc.createAnswer()
                self._hook()
                await self.pc.setLocalDescription(_with_fec(answer))
                self.negotiations += 1
                self._start_watchdog()
                desc = _desc(self.pc.localDescription)
            await self._signal("answer", desc)
        elif kind == "answer":
            async with self._lock:
                if not self._awaiting_answer:
                    log.debug("unexpected answer from %s", self.remote_user)
                    return
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=data["sdp"], type=data["type"])
                )
                await self._apply_pending_candidates()
                self._apply_remote_fec()
                self._awaiting_answer = False
                self.negotiations += 1
                again, self._again = self._again, False
            if again:
                await self.renegotiate()
        elif kind == "renegotiate" and self.offerer:
            await self.renegotiate()

    def _apply_remote_fec(self) -> None:
        """Tell our audio sender which Opus payload types the remote asked in-band FEC (and
        stereo) for."""
        remote = self.pc.remoteDescription
        if remote is None:
            return
        for t in self.pc.getTransceivers():
            handle = _compat.shared_encoder(t.sender)
            if t.kind == "audio" and isinstance(handle, SenderEncoder):
                handle.set_remote_fec(
                    remote_fec_payload_types(remote.sdp, t.mid),
                    remote_opus_payload_types(remote.sdp, t.mid, opus_stereo),
                )

    def _hook(self) -> None:
        icehooks.attach(
            self.pc, host_addresses=self._host_addresses, shaper=self._shaper, turn=self._turn
        )
        icehooks.deliver_directly(self.pc)

    async def add_candidate(self, data: dict[str, Any]) -> None:
        """Apply a trickled remote candidate: ``{candidate, sdpMid, sdpMLineIndex}`` as a
        browser's RTCIceCandidateInit; ``candidate: ""`` (or absent) marks the end of
        candidates. Kept (bounded) until the remote description is set. A malformed or
        unsupported candidate is logged and ignored: it never fails the call."""
        if self._closed:
            return
        if self.pc.remoteDescription is None:
            if len(self._pending_candidates) < MAX_PENDING_CANDIDATES:
                self._pending_candidates.append(data)
            return
        line = data.get("candidate")
        mid, index = data.get("sdpMid"), data.get("sdpMLineIndex")
        try:
            if line in (None, ""):
                await self.pc.addIceCandidate(None)  # type: ignore[arg-type]
                return
            self._trickled += 1
            if self._trickled > MAX_TRICKLED_CANDIDATES:
                raise ValueError(f"more than {MAX_TRICKLED_CANDIDATES} candidates")
            if not isinstance(line, str) or len(line) > MAX_CANDIDATE_CHARS:
                raise ValueError("candidate must be a string of at most 512 characters")
            if mid is not None and not isinstance(mid, str):
                raise ValueError("sdpMid must be a string")
            if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
                raise ValueError("sdpMLineIndex must be an integer")
            if mid is None and index is None:
                mid, index = None, 0  # the first m-line: everything is bundled on it
            candidate = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
            candidate.sdpMid, candidate.sdpMLineIndex = mid, index
            await self.pc.addIceCandidate(candidate)
        except (AssertionError, ValueError, IndexError, TypeError, KeyError) as exc:
            log.info("ignoring a bad candidate from %s: %s", self.remote_user, exc)

    async def _apply_pending_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for data in pending:
            await self.add_candidate(data)

    def selected_pair(self) -> SelectedPair | None:
        """The nominated ICE pair media flows on, with its type and RTT; None before ICE
        completed. The type says whether the call is relayed (``relay``) or direct."""
        for conn in icehooks.connections(self.pc):
            for pair in _compat.nominated_pairs(conn):
                local, remote = pair.local_candidate, pair.remote_candidate
                kind = next((t for t in _PAIR_TYPES if t in (local.type, remote.type)), local.type)
                rtts = [
                    r
                    for r in (rtcp_log(t.sender).rtt_ms for t in self.pc.getTransceivers())
                    if r is not None
                ]
                return SelectedPair(
                    type=kind,
                    local_type=local.type,
                    remote_type=remote.type,
                    local_address=pair.local_addr,
                    remote_address=pair.remote_addr,
                    rtt_ms=min(rtts) if rtts else None,
                )
        return None

    # ------------------------------------------------------------------ state

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name=f"peer-{self.remote_user}")

    async def _watch(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            self._fail(
                f"media to {self.remote_user} did not connect within {self.connect_timeout:g} s"
            )

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("peer %s connection state %s", self.remote_user, state)
        if state == "connected":
            self.connected.set()
        elif state == "failed":
            self._fail(f"media connection to {self.remote_user} failed")

    def _fail(self, reason: str) -> None:
        if self.failed or self._closed:
            return
        self.failed = True
        turn = icehooks.turn_errors(self.pc)
        if turn:
            reason += f" (TURN allocation failed: {', '.join(turn)})"

        log.warning("%s", reason)
        if self._on_failed is not None:
            self._on_failed(self, reason)

    def _feed_audio(self, samples: Any, sample_rate: int, concealed: bool) -> None:
        if self.remote_audio is not None:
            self.remote_audio.feed(samples, sample_rate, concealed)

    def _feed_video(self, frame: Any) -> None:
        if self.remote_video is not None:
            self.remote_video.feed(frame)

    @property
    def video_receiver(self) -> VideoReceiver | None:
        """The receive path of the remote video (counters of frames decoded in the loop and
        in its worker thread); None before the first negotiation with video."""
        return self._video_receiver

    @property
    def audio_receiver(self) -> AudioReceiver | None:
        """The receive path of the remote audio (counters of decoded and concealed frames);
        None before the first negotiation."""
        return self._audio_receiver

    def _on_track(self, track: MediaStreamTrack) -> None:
        user = self.remote_user
        if track.kind == "audio":
            audio_hook = self._on_audio_frame
            self.remote_audio = RemoteAudio(
                track,
                on_frame=None
                if audio_hook is None
                else (lambda samples, rate: audio_hook(user, samples, rate)),
            )
            self.remote_audio.start()
        elif track.kind == "video":
            video_hook = self._on_video_frame
            self.remote_video = RemoteVideo(
                track,
                on_frame=None if video_hook is None else (lambda frame: video_hook(user, frame)),
            )
            self.remote_video.start()

    def take_volume(self) -> int:
        """Volume (0..100) of this user's audio since the last take; 0 before their track."""
        return self.remote_audio.take_volume() if self.remote_audio is not None else 0

    async def quality_sample(self, now: float) -> PeerSample:
        """What this connection tells the quality monitor now (``now`` on the monitor's
        clock): its state, the audio received (RTP stats) and the RTCP reports from the
        peer about what we send."""
        if self.failed or self.pc.connectionState in ("failed", "closed"):
            # "closed" under a live session: aioice's consent checks gave up (about 30 s of
            # silence), and media will not come back on this connection
            return PeerSample(connected=False, failed=True)
        if not self.connected.is_set():
            return PeerSample(connected=False)
        sample = PeerSample()
        wall = clock.current_datetime()
        last_seen = None
        audio_receiver = audio_sender = None
        for t in self.pc.getTransceivers():
            for src in t.receiver.getSynchronizationSources():
                if last_seen is None or src.timestamp > last_seen:
                    last_seen = src.timestamp
            if t.kind == "audio" and audio_receiver is None:
                audio_receiver, audio_sender = t.receiver, t.sender
        if last_seen is not None:
            sample.last_packet_at = now - max(0.0, (wall - last_seen).total_seconds())
        if audio_receiver is not None:
            inbound, _ = snapshot_from_report(await audio_receiver.getStats(), "audio")
            if inbound is not None:
                sample.packets_received = inbound.packets_received
                sample.packets_lost = inbound.packets_lost
                sample.jitter_ms = inbound.jitter_ms
        if audio_sender is not None:
            rlog = rtcp_log(audio_sender)
            sample.blocks = rlog.take_blocks()
            sample.packets_sent = rlog.packets_sent
        return sample

    async def get_stats(self) -> Any:
        """aiortc's RTCStatsReport for this connection."""
        return await self.pc.getStats()

    async def close(self) -> None:
        """Close the connection, stop consuming remote tracks; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._audio_track is not None:
            self._local_audio.unsubscribe(self._audio_track)
        self._release_video()
        for handle in self._encoder_handles:
            handle.release()
        await self.pc.close()
        if self._audio_receiver is not None:
            self._audio_receiver.close()
        if self._video_receiver is not None:
            self._video_receiver.close()
        for remote in (self.remote_audio, self.remote_video):
            if remote is not None:
                await remote.stop()


def _with_fec(desc: RTCSessionDescription) -> RTCSessionDescription:
    """Our offer or answer, asking the remote Opus encoder for in-band FEC."""
    return RTCSessionDescription(sdp=offer_inband_fec(desc.sdp), type=desc.type)


def remote_fec_payload_types(sdp: str, mid: str | None) -> frozenset[int]:
    """The Opus payload types whose ``fmtp`` says ``useinbandfec=1`` in the audio section
    ``mid`` of ``sdp`` (RFC 7587: the receiver of that section wants in-band FEC)."""
    return remote_opus_payload_types(sdp, mid, inband_fec)


def remote_opus_payload_types(
    sdp: str, mid: str | None, wanted: Callable[[Any], bool]
) -> frozenset[int]:
    """The payload types of the audio section ``mid`` of ``sdp`` whose codec (with its
    ``fmtp`` parameters) is ``wanted`` (e.g. :func:`~callkit.media.encoding.opus_stereo`)."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "audio" and media.rtp.muxId == mid:
            return frozenset(
                c.payloadType for c in media.rtp.codecs if c.payloadType is not None and wanted(c)
            )
    return frozenset()


def _desc(desc: RTCSessionDescription | None) -> dict[str, str]:
    assert desc is not None
    return {"sdp": desc.sdp, "type": desc.type}
