"""PeerSession: the one module that talks to aiortc's RTCPeerConnection.

One session per remote participant (full mesh). The participant who joined later creates the
offer; aiortc gathers all candidates before ``setLocalDescription`` returns, so an SDP carries
its candidates and no trickle ICE is needed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription)
from aiortc.mediastreams import MediaStreamTrack

from . import icehooks
from .netsim import NetworkShaper
from .tracks import LocalAudio, LocalVideo, RemoteAudio, RemoteVideo

log = logging.getLogger("media.peer")

#: a peer connection that is not "connected" this long after the offer/answer is "failed"
CONNECT_TIMEOUT = 10.0


class PeerSession:
    """Media to and from one remote user."""

    def __init__(self, remote_user: str, *, local_audio: LocalAudio,
                 local_video: LocalVideo | None, ice_servers: list[RTCIceServer] | None = None,
                 host_addresses: list[str] | None = None, shaper: NetworkShaper | None = None,
                 on_failed: Callable[["PeerSession", str], None] | None = None,
                 on_audio_frame: Callable[[str, Any, int], None] | None = None,
                 on_video_frame: Callable[[str, Any], None] | None = None) -> None:
        self.remote_user = remote_user
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self._local_audio = local_audio
        self._local_video = local_video
        self._host_addresses = host_addresses
        self._shaper = shaper
        self._on_failed = on_failed
        self._on_audio_frame = on_audio_frame
        self._on_video_frame = on_video_frame
        self._sent: list[MediaStreamTrack] = []
        self.remote_audio: RemoteAudio | None = None
        self.remote_video: RemoteVideo | None = None
        self.failed = False
        self.connected = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------------ negotiation

    def _add_local_tracks(self) -> None:
        audio = self._local_audio.subscribe()
        self._sent.append(audio)
        self.pc.addTrack(audio)
        if self._local_video is not None:
            video = self._local_video.subscribe()
            self._sent.append(video)
            self.pc.addTrack(video)

    def _attach_hooks(self) -> None:
        icehooks.attach(self.pc, host_addresses=self._host_addresses, shaper=self._shaper)

    async def create_offer(self) -> dict[str, str]:
        """Add our tracks and return the offer (with candidates) to relay."""
        self._add_local_tracks()
        offer = await self.pc.createOffer()
        self._attach_hooks()
        await self.pc.setLocalDescription(offer)
        self._start_watchdog()
        return _desc(self.pc.localDescription)

    async def handle_offer(self, desc: dict[str, Any]) -> dict[str, str]:
        """Apply a remote offer, add our tracks, and return the answer to relay."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=desc["sdp"],
                                                                 type=desc["type"]))
        self._add_local_tracks()
        answer = await self.pc.createAnswer()
        self._attach_hooks()
        await self.pc.setLocalDescription(answer)
        self._start_watchdog()
        return _desc(self.pc.localDescription)

    async def handle_answer(self, desc: dict[str, Any]) -> None:
        """Apply the remote answer to our offer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=desc["sdp"],
                                                                 type=desc["type"]))

    # ------------------------------------------------------------------ state

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name=f"peer-{self.remote_user}")

    async def _watch(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            self._fail(f"media to {self.remote_user} did not connect within "
                       f"{CONNECT_TIMEOUT:.0f} s")

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
        log.warning("%s", reason)
        if self._on_failed is not None:
            self._on_failed(self, reason)

    def _on_track(self, track: MediaStreamTrack) -> None:
        user = self.remote_user
        if track.kind == "audio":
            audio_hook = self._on_audio_frame
            self.remote_audio = RemoteAudio(track, on_frame=None if audio_hook is None else (
                lambda samples, rate: audio_hook(user, samples, rate)))
            self.remote_audio.start()
        elif track.kind == "video":
            video_hook = self._on_video_frame
            self.remote_video = RemoteVideo(track, on_frame=None if video_hook is None else (
                lambda frame: video_hook(user, frame)))
            self.remote_video.start()

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
        for track in self._sent:
            if isinstance(track, MediaStreamTrack):
                if track.kind == "audio":
                    self._local_audio.unsubscribe(track)
                elif self._local_video is not None:
                    self._local_video.unsubscribe(track)
        await self.pc.close()
        for remote in (self.remote_audio, self.remote_video):
            if remote is not None:
                await remote.stop()


def _desc(desc: RTCSessionDescription | None) -> dict[str, str]:
    assert desc is not None
    return {"sdp": desc.sdp, "type": desc.type}
