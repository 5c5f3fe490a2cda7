"""PeerMesh: the peer connections of one engine's call, as a full mesh.

The mesh owns everything media-side of a call that involves other members: the local sources
and their fan-out to every peer connection (:class:`~callkit.media.tracks.LocalAudio`,
:class:`~callkit.media.tracks.LocalVideo`), one :class:`~callkit.media.peer.PeerSession` per
remote member, the offer/answer negotiation (relayed signals are applied one at a time, in
arrival order, by one worker) and closing it all. The engine only says who is in the call
(:meth:`connect`, :meth:`close_peer`), forwards relayed signals (:meth:`deliver`) and gets
back what it must act on through callbacks (signals to send, errors, failures, frames).

Another topology (an SFU: one uplink, N downlinks) can replace this class behind the same
methods; the meters (:mod:`callkit.media.meters`) read through :meth:`peer` and
:class:`~callkit.media.peer.PeerSession` methods only.

The mesh never imports signaling: relayed data arrives already checked by the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCIceServer

from .encoding import EncoderPool
from .netsim import NetworkShaper
from .peer import CONNECT_TIMEOUT, PeerSession
from .sources import AudioSource, VideoSource
from .tracks import LocalAudio, LocalVideo

__all__ = ["MAX_PENDING_SIGNALS", "PeerMesh", "SignalSender"]

log = logging.getLogger(__name__)

#: relayed signals waiting for the worker; more are dropped (a hostile peer cannot grow it)
MAX_PENDING_SIGNALS = 256

#: ``send(user, kind, data)``: relay an ``offer`` / ``answer`` / ``renegotiate`` to ``user``
SignalSender = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class PeerMesh:
    """One peer connection per remote member of the current call; see the module docstring.

    ``on_error(msg)`` reports a relayed signal that failed to apply (the engine fires
    ``onError``); ``on_failed(user, reason)`` a peer connection that did not connect or
    failed (only for the current session of that user); ``on_audio_frame(user, samples,
    rate)`` / ``on_video_frame(user, frame)`` get every decoded frame.
    """

    def __init__(
        self,
        *,
        audio_source: AudioSource | None = None,
        video_source: VideoSource | None = None,
        host_addresses: list[str] | None = None,
        shaper: NetworkShaper | None = None,
        on_error: Callable[[str], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        on_audio_frame: Callable[[str, Any, int], None] | None = None,
        on_video_frame: Callable[[str, Any], None] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        #: the peer connection watchdog: seconds each connection may take to connect
        self.connect_timeout = float(connect_timeout)
        self.local_audio = LocalAudio(audio_source)
        self._local_video = LocalVideo(video_source) if video_source is not None else None
        self._video_source = video_source
        #: one encoder per source and codec for all peer connections (encode once)
        self.audio_encoders = EncoderPool()
        self.video_encoders = EncoderPool()
        self._host_addresses = host_addresses
        self._shaper = shaper
        self._on_error = on_error
        self._on_failed = on_failed
        self._on_audio_frame = on_audio_frame
        self._on_video_frame = on_video_frame
        self._peers: dict[str, PeerSession] = {}
        self._send: SignalSender | None = None
        self._ice_servers: list[RTCIceServer] = []
        self._video = False
        self._signals: asyncio.Queue[tuple[str, str, dict[str, Any]]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # this call's: cancelled by end()
        self._closing: set[asyncio.Task[Any]] = set()  # peer closes: awaited by aclose()

    # ------------------------------------------------------------------ views

    @property
    def active(self) -> bool:
        """True between :meth:`begin` and :meth:`end`."""
        return self._signals is not None

    @property
    def peers(self) -> dict[str, PeerSession]:
        """Open peer sessions by remote user id (a copy)."""
        return dict(self._peers)

    def peer(self, user: str) -> PeerSession | None:
        """The open session with ``user``, or None."""
        return self._peers.get(user)

    @property
    def local_video(self) -> LocalVideo | None:
        """The local video fan-out, None until a video call or a video source needs it."""
        return self._local_video

    def ensure_local_video(self) -> LocalVideo:
        """The local video fan-out, made on first use (a test pattern without a source)."""
        if self._local_video is None:
            from .sources import TestPatternSource

            self._local_video = LocalVideo(self._video_source or TestPatternSource())
        return self._local_video

    def set_audio_source(self, source: AudioSource | None) -> None:
        """Send ``source`` from now on (None: silence)."""
        self.local_audio.set_source(source)

    def set_video_source(self, source: VideoSource | None) -> None:
        """Send ``source`` as video from now on."""
        self._video_source = source
        if self._local_video is not None:
            self._local_video.set_source(source)

    # ------------------------------------------------------------------ call lifetime

    def begin(
        self, *, video: bool, send: SignalSender, ice_servers: list[RTCIceServer] | None = None
    ) -> None:
        """Start a call's mesh: relayed signals are applied from now on; ``send`` relays
        ours. Ends a previous one first."""
        self.end()
        self._video = video
        self._send = send
        self._ice_servers = list(ice_servers or [])
        self._signals = asyncio.Queue(MAX_PENDING_SIGNALS)
        self._spawn(self._signal_worker(self._signals))

    def set_ice_servers(self, ice_servers: list[RTCIceServer]) -> None:
        """ICE servers for peer connections made from now on."""
        self._ice_servers = list(ice_servers)

    def connect(self, user: str) -> None:
        """Open a connection to ``user`` and send the first offer (we joined later)."""
        if not self.active:
            return
        self._spawn(self._new_peer(user, offerer=True).start())

    def deliver(self, from_user: str, kind: str, data: dict[str, Any]) -> None:
        """Queue a relayed ``offer`` / ``answer`` / ``renegotiate`` / ``candidate`` (already
        checked) from ``from_user``; dropped when no call is running or the queue is full."""
        queue = self._signals
        if queue is None:
            log.debug("dropping %s from %s: no call", kind, from_user)
            return
        try:
            queue.put_nowait((from_user, kind, data))
        except asyncio.QueueFull:
            log.warning("dropping %s from %s: %d signals pending", kind, from_user, queue.qsize())

    def set_video(self, video: bool) -> None:
        """Switch every connection to sending video or not (a media type change)."""
        self._video = video
        local_video = self.ensure_local_video() if video else self._local_video
        if video:
            assert local_video is not None
            local_video.enabled = True
        for session in self._peers.values():
            self._spawn(session.set_send_video(video, local_video))

    def close_peer(self, user: str) -> None:
        """Close the connection to ``user`` (they left); unknown users are ignored."""
        session = self._peers.pop(user, None)
        if session is not None:
            self._close_later(session)

    def end(self) -> None:
        """Close every connection and stop applying signals (the call ended)."""
        self._signals = None
        self._send = None
        for task in list(self._tasks):
            task.cancel()
        for user in list(self._peers):
            self.close_peer(user)

    async def aclose(self) -> None:
        """End the call, wait for every connection to close and stop the local sources."""
        self.end()
        pending = list(self._tasks | self._closing)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.local_audio.stop()
        if self._local_video is not None:
            await self._local_video.stop()

    # ------------------------------------------------------------------ internals

    def _new_peer(self, user: str, *, offerer: bool) -> PeerSession:
        old = self._peers.pop(user, None)
        if old is not None:
            self._close_later(old)
        send = self._send

        async def signal(kind: str, data: dict[str, Any]) -> None:
            if send is not None and self._send is send:
                await send(user, kind, data)

        session = PeerSession(
            user,
            offerer=offerer,
            signal=signal,
            local_audio=self.local_audio,
            local_video=self._local_video if self._video else None,
            send_video=self._video,
            ice_servers=self._ice_servers,
            host_addresses=self._host_addresses,
            shaper=self._shaper,
            on_failed=self._peer_failed,
            on_audio_frame=self._on_audio_frame,
            on_video_frame=self._on_video_frame,
            audio_encoders=self.audio_encoders,
            video_encoders=self.video_encoders,
            connect_timeout=self.connect_timeout,
        )
        self._peers[user] = session
        return session

    async def _signal_worker(self, queue: asyncio.Queue[tuple[str, str, dict[str, Any]]]) -> None:
        """Apply relayed signals one at a time, in arrival order (ends by cancellation)."""
        while True:
            user, kind, data = await queue.get()
            session = self._peers.get(user)
            try:
                if kind == "offer" and (session is None or not session.offerer):
                    if session is None:
                        session = self._new_peer(user, offerer=False)
                    await session.handle_signal("offer", data)
                elif kind in ("answer", "renegotiate", "candidate") and session is not None:
                    await session.handle_signal(kind, data)
                else:
                    log.debug("ignoring %s from %s", kind, user)
            except Exception as exc:  # aiortc raises many kinds on hostile SDP: survive them all
                log.warning("%s from %s failed: %r", kind, user, exc)
                if self._on_error is not None:
                    self._on_error(f"bad {kind} from {user}: {exc!r:.200}")

    def _peer_failed(self, session: PeerSession, reason: str) -> None:
        if self._peers.get(session.remote_user) is session and self._on_failed is not None:
            self._on_failed(session.remote_user, reason)

    def _close_later(self, session: PeerSession) -> None:
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mesh task failed", exc_info=task.exception())
