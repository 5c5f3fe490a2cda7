"""CallEngine: TUICallKit's engine API over the signaling service and aiortc media."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceServer

from callkit.media.mesh import PeerMesh
from callkit.media.meters import CallMeters
from callkit.media.netsim import NetworkConditions, NetworkCounts, NetworkShaper
from callkit.media.peer import CONNECT_TIMEOUT, PeerSession, ice_servers_from_json
from callkit.media.sources import AudioSource, VideoSource
from callkit.signaling import protocol as p
from callkit.signaling.codes import CallMediaType, CallRole, ErrorCode
from callkit.signaling.relaydata import check_relay_data

from .client import SignalingClient, signaling_urls
from .errors import CallError
from .events import EventEmitter, EventName, Listener, report_error
from .params import CallParams
from .streams import StreamsMixin

log = logging.getLogger("callkit.engine")

MAX_CALLEES = 8


class CallState(enum.Enum):
    """Where the local user is: idle, calling out, ringing in, or in a connected call."""

    IDLE = "idle"
    CALLING = "calling"
    RINGING = "ringing"
    CONNECTED = "connected"


@dataclass
class CallContext:
    """What the engine knows of its current call (mirrors the server's snapshot)."""

    call_id: str
    room_id: int
    group_id: str
    media_type: CallMediaType
    role: CallRole
    state: CallState
    members: dict[str, str] = field(default_factory=dict)  # userId -> "ringing" | "joined"
    #: time.monotonic() of this user's onCallBegin (None before)
    began_at: float | None = None

    def update(self, snapshot: dict[str, Any] | None) -> None:
        if not snapshot:
            return
        self.room_id = int(snapshot.get("roomID", self.room_id))
        self.media_type = CallMediaType(snapshot.get("callMediaType", self.media_type))
        self.members = {m["userId"]: m["state"] for m in snapshot.get("members", [])}

    def joined(self) -> list[str]:
        return [u for u, s in self.members.items() if s == "joined"]


class CallEngine(StreamsMixin):
    """A TUICallKit-style call engine for one user.

    ``await init(...)`` logs in; ``call`` / ``accept`` / ``hangup`` ... drive calls; events
    reach listeners added with :meth:`add_event_listener`. Several engines may share a loop.

    ``url`` is the service's WebSocket URL, or a list of the URLs of several nodes of one
    service (``callkit serve --redis``): ``init`` logs in at the first that answers, and on a
    lost link the engine moves to the next URL (round robin, backoff 0.1 s up to 2 s) and
    resumes its session there within the service's resume grace. A node that does not know
    the session (nodes without shared state) ends the call as a forgotten one (onCallEnd /
    onCallCancelled) and the engine stays logged in there.

    ``connect_timeout``: seconds a peer connection may take to connect (or a member who must
    offer to send the offer) before ``onError -1301``; 10 s by default.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        audio_source: AudioSource | None = None,
        video_source: VideoSource | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        ice_addresses: list[str] | None = None,
        network: NetworkConditions | None = None,
        volume_interval: float = 0.3,
        quality_interval: float = 2.0,
        tls_ca_file: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._meters = CallMeters(
            volume_interval=volume_interval, quality_interval=quality_interval
        )
        self._ssl: ssl.SSLContext | None = None
        if tls_ca_file is not None:  # trust this CA (PEM) for a wss:// service
            try:
                self._ssl = ssl.create_default_context(cafile=tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot use tls_ca_file {tls_ca_file!r}: {exc}") from None
        #: the service URLs (one, or one per node), in the order they are tried
        self.urls = signaling_urls(url)
        self.user_id: str | None = None
        self.sdk_app_id: int | None = None
        self._events = EventEmitter()
        self._client: SignalingClient | None = None
        self._call: CallContext | None = None
        self._ice_servers = ice_servers
        #: the ICE servers of the latest login reply (used when ``ice_servers`` is None)
        self._login_ice_servers: list[RTCIceServer] = []
        self._ice_addresses = ice_addresses
        self._shaper = NetworkShaper(network or NetworkConditions())
        #: the call's peer connections and the fan-out of the local sources
        self._mesh = PeerMesh(
            audio_source=audio_source,
            video_source=video_source,
            host_addresses=ice_addresses,
            shaper=self._shaper,
            on_error=lambda msg: self._emit_error(ErrorCode.MEDIA_FAILED, msg),
            on_failed=self._on_peer_failed,
            on_audio_frame=self._tap_audio,
            on_video_frame=self._tap_video,
            connect_timeout=connect_timeout,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._call_tasks: set[asyncio.Task[Any]] = set()
        self._mic_open = True
        self._camera_open = True
        self._video_available: dict[str, bool] = {}
        self._multi_device = False
        self._busy: set[str] = set()  # requests in flight, for REQUEST_REPEATED
        self._destroyed = False
        #: frame taps for bots: {user_id: [fn(samples, sample_rate)]} / {user_id: [fn(frame)]}
        self._audio_taps: dict[str, list[Any]] = {}
        self._video_taps: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ properties

    @property
    def call_state(self) -> CallState:
        """IDLE, CALLING, RINGING or CONNECTED."""
        return self._call.state if self._call is not None else CallState.IDLE

    @property
    def url(self) -> str:
        """The URL of the node the engine is logged in at (or tries next); the first URL
        before ``init``."""
        return self._client.url if self._client is not None else self.urls[0]

    @property
    def call_id(self) -> str | None:
        return self._call.call_id if self._call is not None else None

    @property
    def room_id(self) -> int | None:
        return self._call.room_id if self._call is not None else None

    @property
    def ice_servers(self) -> list[RTCIceServer]:
        """The STUN/TURN servers new peer connections use: the application's ``ice_servers``
        if it passed them, else those of the service's latest login reply (TURN credentials
        are refreshed on every login and resume)."""
        if self._ice_servers is not None:
            return list(self._ice_servers)
        return list(self._login_ice_servers)

    @property
    def peers(self) -> dict[str, PeerSession]:
        """Open peer sessions by remote user id (read-only view for tests and tools)."""
        return self._mesh.peers

    # ------------------------------------------------------------------ listeners

    def add_event_listener(self, event: EventName, fn: Listener) -> None:
        """Call ``fn(res: dict)`` on ``event`` (one of the 17 TUICallKit event names)."""
        self._events.add(event, fn)

    def remove_event_listener(self, event: EventName, fn: Listener) -> None:
        """Stop calling ``fn`` on ``event``."""
        self._events.remove(event, fn)

    # ------------------------------------------------------------------ login

    async def init(self, sdk_app_id: int, user_id: str, user_sig: str) -> None:
        """Log in to the signaling service; raises CallError(-1201) when the login is refused,
        CallError(-1405) saying why and what to check when the service cannot be reached.

        Calling it again (e.g. with a new sig after ``onUserSigExpired``) logs out first.
        """
        if (
            not isinstance(user_id, str)
            or not isinstance(user_sig, str)
            or isinstance(sdk_app_id, bool)
            or not isinstance(sdk_app_id, int)
        ):
            raise CallError(
                ErrorCode.PARAM_INVALID, "init needs sdk_app_id: int, user_id: str, user_sig: str"
            )
        if not p.valid_user_id(user_id):
            raise CallError(
                ErrorCode.INIT_FAIL,
                f"invalid user id {user_id!r:.40}: letters, "
                f"digits, '-' and '_', 1 to 32 characters",
            )
        if self._client is not None:
            await self._logout()
        self._destroyed = False
        client = SignalingClient(
            self.urls,
            self._on_push,
            self._on_link_closed,
            on_resumed=self._on_link_resumed,
            on_lost=self._on_link_lost,
            on_grace_over=self._on_link_grace_over,
            ssl=self._ssl,
        )
        try:
            data = await client.connect(
                sdk_app_id=sdk_app_id,
                user_id=user_id,
                user_sig=user_sig,
                multi_device=self._multi_device,
            )
        except CallError as exc:
            if exc.code == ErrorCode.SIGNALING_UNREACHABLE:
                raise CallError(exc.code, exc.message) from None
            raise CallError(ErrorCode.INIT_FAIL, exc.message) from None
        self._login_ice_servers = ice_servers_from_json(data.get("iceServers"))
        self._client = client
        self.user_id = user_id
        self.sdk_app_id = sdk_app_id

    def _require_init(self) -> SignalingClient:
        if self._client is None or self.user_id is None:
            raise CallError(ErrorCode.INIT_FAIL, "call init() first")
        return self._client

    async def enable_multi_device_ability(self, enable: bool) -> None:
        """Let every online device of this user ring; before or after ``init`` (as in
        TUICallKit: after it, the service is told at once)."""
        if not isinstance(enable, bool):
            raise CallError(ErrorCode.PARAM_INVALID, "enable must be a bool")
        self._multi_device = enable
        client = self._client
        if client is not None:
            await client.request(p.MultiDevice, enable=enable)
            client.update_login(multi_device=enable)  # a resume after a drop keeps it

    async def set_self_info(self, nickname: str, avatar_url: str) -> None:
        """Store this user's nickname and avatar on the service (see docs/events.md)."""
        client = self._require_init()
        if not isinstance(nickname, str) or not isinstance(avatar_url, str):
            raise CallError(ErrorCode.PARAM_INVALID, "nickname and avatar_url must be strings")
        await client.request(p.SelfInfo, nickname=nickname, avatar_url=avatar_url)

    # ------------------------------------------------------------------ calls

    async def call(
        self, user_id: str, media_type: CallMediaType | int, params: CallParams | None = None
    ) -> None:
        """Place a 1v1 call to ``user_id``."""
        if not isinstance(user_id, str) or not user_id:
            raise CallError(ErrorCode.PARAM_INVALID, "user_id must be a non-empty string")
        await self._start([user_id], "", media_type, params)

    async def group_call(
        self,
        user_id_list: list[str],
        group_id: str,
        media_type: CallMediaType | int,
        params: CallParams | None = None,
    ) -> None:
        """Place a group call to up to 8 users."""
        if not isinstance(group_id, str):
            raise CallError(ErrorCode.PARAM_INVALID, "group_id must be a string")
        await self._start(user_id_list, group_id, media_type, params)

    def _check_ids(self, ids: Any) -> list[str]:
        if not isinstance(ids, (list, tuple)) or not ids:
            raise CallError(ErrorCode.PARAM_INVALID, "user id list must be a non-empty list")
        if any(not isinstance(u, str) or not u for u in ids):
            raise CallError(ErrorCode.PARAM_INVALID, "user ids must be non-empty strings")
        if self.user_id in ids:
            raise CallError(ErrorCode.PARAM_INVALID, "cannot call yourself")
        if len(set(ids)) != len(ids):
            raise CallError(ErrorCode.PARAM_INVALID, "duplicate user ids")
        if len(ids) > MAX_CALLEES:
            raise CallError(ErrorCode.PARAM_INVALID, f"at most {MAX_CALLEES} callees")
        return list(ids)

    @staticmethod
    def _media(media_type: Any) -> CallMediaType:
        if isinstance(media_type, bool) or media_type not in (1, 2):
            raise CallError(
                ErrorCode.PARAM_INVALID,
                f"media type must be AUDIO (1) or VIDEO (2), got {media_type!r}",
            )
        return CallMediaType(media_type)

    async def _start(
        self, ids: Any, group_id: str, media_type: Any, params: CallParams | None
    ) -> None:
        client = self._require_init()
        callees = self._check_ids(ids)
        media = self._media(media_type)
        params = params if params is not None else CallParams()
        if not isinstance(params, CallParams):
            raise CallError(ErrorCode.PARAM_INVALID, "params must be a CallParams")
        if self._call is not None:
            raise CallError(ErrorCode.REQUEST_REFUSED, f"already {self._call.state.value}")

        def on_reply(data: dict[str, Any]) -> None:
            snap = data["call"]
            ctx = CallContext(
                call_id=snap["callId"],
                room_id=snap["roomID"],
                group_id=snap["groupId"],
                media_type=media,
                role=CallRole.CALLER,
                state=CallState.CALLING,
            )
            ctx.update(snap)
            self._call = ctx

        await self._once(
            "call",
            client.request(
                p.Call,
                on_reply=on_reply,
                callees=callees,
                media_type=int(media),
                group_id=group_id,
                timeout=float(params.timeout),
                user_data=params.user_data,
            ),
        )

    async def _once(self, name: str, coro: Any) -> Any:
        """Run a request unless the same one is already running (REQUEST_REPEATED)."""
        if name in self._busy:
            coro.close()
            raise CallError(ErrorCode.REQUEST_REPEATED, f"{name} is already in progress")
        self._busy.add(name)
        try:
            return await coro
        finally:
            self._busy.discard(name)

    def _require_call(self, *states: CallState) -> tuple[SignalingClient, CallContext]:
        client = self._require_init()
        if self._call is None or (states and self._call.state not in states):
            now = self._call.state.value if self._call is not None else "idle"
            raise CallError(ErrorCode.REQUEST_REFUSED, f"not allowed while {now}")
        return client, self._call

    async def accept(self) -> None:
        """Accept the ringing incoming call."""
        if "accept" in self._busy:
            raise CallError(ErrorCode.REQUEST_REPEATED, "accept is already in progress")
        client, ctx = self._require_call(CallState.RINGING, CallState.CONNECTED)
        if ctx.state is CallState.CONNECTED:
            raise CallError(ErrorCode.REQUEST_REPEATED, "the call is already accepted")
        await self._once("accept", client.request(p.Accept, call_id=ctx.call_id))

    async def reject(self) -> None:
        """Reject the ringing incoming call."""
        client, ctx = self._require_call(CallState.RINGING)
        await self._once("reject", client.request(p.Reject, call_id=ctx.call_id))

    async def ignore(self) -> None:
        """Stop ringing without rejecting (the caller sees line busy)."""
        client, ctx = self._require_call(CallState.RINGING)
        await self._once("ignore", client.request(p.Ignore, call_id=ctx.call_id))

    async def hangup(self) -> None:
        """Cancel an outgoing call, reject a ringing one, or leave a connected one."""
        client, ctx = self._require_call()
        await self._once("hangup", client.request(p.Hangup, call_id=ctx.call_id))

    async def invite_user(self, user_id_list: list[str], params: CallParams | None = None) -> None:
        """Invite more users into the current call."""
        client, ctx = self._require_call(CallState.CALLING, CallState.CONNECTED)
        callees = self._check_ids(user_id_list)
        timeout = (params or CallParams()).timeout
        await client.request(p.Invite, call_id=ctx.call_id, callees=callees, timeout=float(timeout))

    async def join_in_group_call(
        self, room_id: int, group_id: str, media_type: CallMediaType | int
    ) -> None:
        """Join a running group call by its room id."""
        client = self._require_init()
        if isinstance(room_id, bool) or not isinstance(room_id, int) or room_id <= 0:
            raise CallError(
                ErrorCode.PARAM_INVALID, f"room_id must be a positive int, got {room_id!r}"
            )
        media = self._media(media_type)
        if self._call is not None:
            raise CallError(ErrorCode.REQUEST_REFUSED, f"already {self._call.state.value}")

        def on_reply(data: dict[str, Any]) -> None:
            if self._call is None:  # onCallBegin for the join may already have made it
                snap = data["call"]
                self._call = CallContext(
                    call_id=snap["callId"],
                    room_id=snap["roomID"],
                    group_id=snap["groupId"],
                    media_type=media,
                    role=CallRole.CALLED,
                    state=CallState.CONNECTED,
                )
                self._call.update(snap)

        await self._once(
            "join",
            client.request(
                p.Join, on_reply=on_reply, room_id=room_id, group_id=group_id, media_type=int(media)
            ),
        )

    # ------------------------------------------------------------------ media control

    async def switch_call_media_type(self, media_type: CallMediaType | int) -> None:
        """Switch the connected call between VIDEO and AUDIO; everyone renegotiates."""
        media = self._media(media_type)
        client, ctx = self._require_call(CallState.CONNECTED)
        if media is ctx.media_type:
            raise CallError(ErrorCode.REQUEST_REPEATED, f"the call is already {media.name}")
        await self._once(
            "switch", client.request(p.SwitchMedia, call_id=ctx.call_id, media_type=int(media))
        )

    def _apply_media_type(self, ctx: CallContext) -> None:
        video = ctx.media_type is CallMediaType.VIDEO
        if video:
            self._camera_open = True
        self._video_available.clear()
        self._mesh.set_video(video)

    async def open_microphone(self) -> None:
        """Send audio again; the others get onUserAudioAvailable(true)."""
        await self._set_device(audio=True)

    async def close_microphone(self) -> None:
        """Send silence; the others get onUserAudioAvailable(false) and hear volume 0."""
        await self._set_device(audio=False)

    async def open_camera(self) -> None:
        """Send video again (video calls only, else -1205)."""
        await self._set_device(video=True)

    async def close_camera(self) -> None:
        """Stop sending video frames; the others get onUserVideoAvailable(false)."""
        await self._set_device(video=False)

    # ------------------------------------------------------------------ call records

    async def query_recent_calls(
        self,
        *,
        result: str | None = None,
        since: int | None = None,
        until: int | None = None,
        page: int = 1,
        page_size: int = 20,
    ) -> list[dict[str, Any]]:
        """This user's own call records, newest first (the server's ``--db`` records;
        TUICallKit's ``queryRecentCalls``). ``result`` filters by ``callResult`` (e.g.
        ``"NormalEnd"``), ``since`` / ``until`` by ``startTime`` (Unix ms)."""
        client = self._require_init()
        for name, value in (("since", since), ("until", until), ("page", page)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise CallError(ErrorCode.PARAM_INVALID, f"{name} must be an integer")
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise CallError(ErrorCode.PARAM_INVALID, "page_size must be an integer")
        if result is not None and not isinstance(result, str):
            raise CallError(ErrorCode.PARAM_INVALID, "result must be a string")
        data = await client.request(
            p.QueryRecords, result=result, since=since, until=until, page=page, page_size=page_size
        )
        return list(data.get("records", []))

    async def delete_record_calls(self, call_ids: list[str]) -> list[str]:
        """Remove calls from this user's own history (others keep theirs); returns the ids
        that were removed (TUICallKit's ``deleteRecordCalls``)."""
        client = self._require_init()
        if (
            not isinstance(call_ids, list)
            or not all(isinstance(c, str) for c in call_ids)
            or not 1 <= len(call_ids) <= 64
        ):
            raise CallError(ErrorCode.PARAM_INVALID, "call_ids must be a list of 1..64 strings")
        data = await client.request(p.DeleteRecords, call_ids=call_ids)
        return list(data.get("deleted", []))

    async def _set_device(self, *, audio: bool | None = None, video: bool | None = None) -> None:
        client, ctx = self._require_call(CallState.CALLING, CallState.CONNECTED)
        if video is not None and ctx.media_type is not CallMediaType.VIDEO:
            raise CallError(ErrorCode.SCENE_NOT_SUPPORTED, "no camera in an audio call")
        await client.request(p.Device, call_id=ctx.call_id, audio=audio, video=video)
        if audio is not None:
            self._mic_open = audio
            self._mesh.local_audio.muted = not audio
        if video is not None:
            self._camera_open = video
            self._mesh.ensure_local_video().enabled = video

    def set_audio_source(self, source: AudioSource | None) -> None:
        """Use ``source`` for outgoing audio from now on (None: silence), mid-call too."""
        self._mesh.set_audio_source(source)

    def set_video_source(self, source: VideoSource | None) -> None:
        """Use ``source`` for outgoing video from now on, mid-call too."""
        self._mesh.set_video_source(source)

    @property
    def network_counts(self) -> NetworkCounts:
        """What the network simulator did to this engine's outgoing datagrams so far (sent,
        dropped ...): tests compare what they measure with what really happened."""
        return self._shaper.counts()

    def set_network_conditions(
        self, conditions: NetworkConditions, inbound: NetworkConditions | None = None
    ) -> None:
        """Simulate a network on every datagram this engine sends (mid-call too), and with
        ``inbound`` on every datagram it receives (None: leave that direction as it is)."""
        for c in (conditions, inbound):
            if c is not None and not isinstance(c, NetworkConditions):
                raise CallError(ErrorCode.PARAM_INVALID, "expected NetworkConditions")
        self._shaper.set_conditions(conditions)
        if inbound is not None:
            self._shaper.set_inbound_conditions(inbound)

    # ------------------------------------------------------------------ push handling

    def _on_push(self, message: p.Message) -> None:
        if isinstance(message, p.Event):
            self._on_event(message)
        elif isinstance(message, p.Relayed):
            self._on_relayed(message)
        elif isinstance(message, p.Kicked):
            self._end_locally()
            self._drop_client()
            self._events.emit("onKickedOffline", {})
        elif isinstance(message, p.SigExpired):
            self._end_locally()
            self._drop_client()
            self._events.emit("onUserSigExpired", {})

    def _on_event(self, ev: p.Event) -> None:
        name, payload, ctx = ev.event, ev.payload, self._call
        if name == "onCallReceived":
            if ctx is not None and ctx.call_id != ev.call_id:
                log.warning(
                    "%s: ignoring a second incoming call while %s", self.user_id, ctx.state.value
                )
                return
            ctx = CallContext(
                call_id=ev.call_id,
                room_id=0,
                group_id=payload["groupId"],
                media_type=CallMediaType(payload["callMediaType"]),
                role=CallRole.CALLED,
                state=CallState.RINGING,
            )
            self._call = ctx
        elif ctx is None or ctx.call_id != ev.call_id:
            if name == "onCallBegin" and ev.call:  # join_in_group_call before its reply
                ctx = CallContext(
                    call_id=ev.call_id,
                    room_id=payload["roomID"],
                    group_id=ev.call.get("groupId", ""),
                    media_type=CallMediaType(payload["callMediaType"]),
                    role=CallRole(payload["callRole"]),
                    state=CallState.RINGING,
                )
                self._call = ctx
            else:
                log.debug("%s: dropping %s for call %s", self.user_id, name, ev.call_id)
                return
        # members joined before this event: on joining we get onUserJoin for each of them,
        # and they do not owe us an offer (we offer to them)
        joined_before = set(ctx.joined())
        ctx.update(ev.call)
        if name == "onCallBegin":
            ctx.began_at = time.monotonic()
            ctx.state = CallState.CONNECTED
            ctx.role = CallRole(payload["callRole"])
            self._begin_media(ctx)
        elif name == "onUserLeave":
            self._meters.forget(payload["userId"])
            self._mesh.close_peer(payload["userId"])
        elif (
            name == "onUserJoin"
            and ctx.state is CallState.CONNECTED
            and payload["userId"] != self.user_id
            and payload["userId"] not in joined_before
        ):  # a later joiner offers to us
            self._watch_offer(ctx, payload["userId"])
        elif name == "onCallMediaTypeChanged":
            ctx.media_type = CallMediaType(payload["newCallMediaType"])
            self._apply_media_type(ctx)
        elif name == "onUserVideoAvailable":
            if self._video_available.get(payload["userId"]) == payload["isVideoAvailable"]:
                return  # already reported (first frame arrived before the server said so)
            self._video_available[payload["userId"]] = payload["isVideoAvailable"]
        self._events.emit(name, payload)
        if name in ("onCallEnd", "onCallCancelled") and self._call is ctx:
            self._end_locally()

    # ------------------------------------------------------------------ media

    def _begin_media(self, ctx: CallContext) -> None:
        video = ctx.media_type is CallMediaType.VIDEO
        if video:
            self._mesh.ensure_local_video().enabled = self._camera_open
        self._mesh.local_audio.muted = not self._mic_open

        async def send(user: str, kind: str, data: dict[str, Any]) -> None:
            await self._relay(ctx, user, kind, data)

        self._mesh.begin(video=video, send=send, ice_servers=self.ice_servers)
        me = str(self.user_id)
        self._meters.start(
            self._mesh,
            self_id=me,
            others=lambda: [u for u in ctx.joined() if u != me],
            on_volumes=lambda volumes: self._events.emit(
                "onUserVoiceVolumeChanged", {"volumeMap": volumes}
            ),
            on_quality=self._report_quality,
        )
        if ctx.role is CallRole.CALLED:  # the later joiner offers to everyone already in
            for user in ctx.joined():
                if user != self.user_id:
                    self._mesh.connect(user)
        else:  # the others joined later: they offer, within the peer watchdog's bound
            for user in ctx.joined():
                if user != self.user_id:
                    self._watch_offer(ctx, user)

    def _report_quality(self, local: int, remote: dict[str, int]) -> None:
        entries = [{"userId": str(self.user_id), "quality": local}]
        entries += [{"userId": u, "quality": q} for u, q in remote.items()]
        self._events.emit("onUserNetworkQualityChanged", {"networkQualityList": entries})

    def _watch_offer(self, ctx: CallContext, user: str) -> None:
        task = self._spawn(self._offer_watchdog(ctx, user), call=True)
        task.set_name(f"callkit-offer-watchdog {self.user_id}<-{user}")

    async def _offer_watchdog(self, ctx: CallContext, user: str) -> None:
        """onError -1301 (and hang up a 1v1 call) when ``user``, who joined after us and so
        must offer, sent no offer within the peer connection watchdog (``connect_timeout``)."""
        timeout = self._mesh.connect_timeout
        await asyncio.sleep(timeout)
        if self._call is ctx and user in ctx.joined() and self._mesh.peer(user) is None:
            self._emit_error(
                ErrorCode.MEDIA_FAILED,
                f"media to {user} did not connect within {timeout:g} s (no offer)",
            )
            if len(ctx.joined()) <= 2 and self._client is not None:
                self._spawn(self._hangup_quietly())

    def _on_relayed(self, msg: p.Relayed) -> None:
        ctx = self._call
        if (
            ctx is None
            or ctx.call_id != msg.call_id
            or ctx.state is not CallState.CONNECTED
            or not self._mesh.active
        ):
            log.debug("%s: dropping %s from %s", self.user_id, msg.kind, msg.from_user)
            return
        try:
            check_relay_data(msg.kind, msg.data)
        except ValueError as exc:
            log.warning("%s: dropping %s from %s: %s", self.user_id, msg.kind, msg.from_user, exc)
            self._emit_error(ErrorCode.MEDIA_FAILED, f"bad {msg.kind} from {msg.from_user}")
            return
        self._mesh.deliver(msg.from_user, msg.kind, msg.data)

    async def _relay(self, ctx: CallContext, to: str, kind: str, data: dict[str, Any]) -> None:
        if self._client is None or self._call is not ctx:
            return
        try:
            await self._client.request(p.Relay, call_id=ctx.call_id, to=to, kind=kind, data=data)
        except CallError as exc:
            log.info("%s: relay of %s to %s failed: %s", self.user_id, kind, to, exc)

    def _on_peer_failed(self, user: str, reason: str) -> None:
        self._emit_error(ErrorCode.MEDIA_FAILED, reason)
        ctx = self._call
        if ctx is not None and len(ctx.joined()) <= 2 and self._client is not None:
            self._spawn(self._hangup_quietly())

    async def _hangup_quietly(self) -> None:
        try:
            await self.hangup()
        except CallError as exc:
            log.info("%s: hangup after media failure: %s", self.user_id, exc)

    def _tap_audio(self, user: str, samples: Any, sample_rate: int) -> None:
        for fn in list(self._audio_taps.get(user, ())):
            fn(samples, sample_rate)

    def _tap_video(self, user: str, frame: Any) -> None:
        ctx = self._call
        if (
            ctx is not None
            and ctx.media_type is CallMediaType.VIDEO
            and user not in self._video_available
        ):
            # the first decoded frame of a user: their video is available (TRTC semantics)
            self._video_available[user] = True
            self._events.emit("onUserVideoAvailable", {"userId": user, "isVideoAvailable": True})
        for fn in list(self._video_taps.get(user, ())):
            fn(frame)

    def _end_locally(self) -> None:
        """Forget the call and tear its media down (after onCallEnd / cancel / loss)."""
        self._call = None
        self._video_available.clear()
        self._mic_open = self._camera_open = True  # every call starts with both open
        self._mesh.local_audio.muted = False
        for task in list(self._call_tasks):
            task.cancel()
        self._meters.stop()
        self._mesh.end()

    def _emit_error(self, code: int, msg: str) -> None:
        self._events.emit("onError", {"code": int(code), "msg": msg})

    def _spawn(self, coro: Any, *, call: bool = False) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        if call:
            self._call_tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._call_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            report_error(log, "%s: background task failed", self.user_id, exc=task.exception())

    # ------------------------------------------------------------------ link loss / teardown

    def _on_link_closed(self, reason: str) -> None:
        """The link is lost for good (reconnecting failed): end the call, log out, -1401."""
        if self._destroyed or self._client is None:
            return
        had_call = self._call is not None
        self._end_locally()
        self._drop_client()
        self._emit_error(
            ErrorCode.SIGNALING_SEND_FAIL,
            f"signaling lost: {reason}" + ("; the call ended" if had_call else ""),
        )

    def _on_link_lost(self, reason: str) -> None:
        """The link dropped (it reconnects by itself): onError -1401, once per drop."""
        if not self._destroyed and self._client is not None:
            self._emit_error(
                ErrorCode.SIGNALING_SEND_FAIL, f"signaling link lost ({reason}); reconnecting"
            )

    def _on_link_grace_over(self) -> None:
        """Still no link after the service's resume grace: the service has ended our part of
        the call, so end it here too (onCallEnd / onCallCancelled)."""
        if not self._destroyed:
            self._end_forgotten_call()

    def _on_link_resumed(self, data: dict[str, Any]) -> None:
        """The link came back (login reply ``data``): keep the call if the service kept it,
        else end it (onCallEnd / onCallCancelled). Events held for us were handled already."""
        self._login_ice_servers = ice_servers_from_json(data.get("iceServers"))
        self._mesh.set_ice_servers(self.ice_servers)  # fresh TURN credentials for new peers
        ctx, snap = self._call, data.get("call")
        if ctx is None:
            return
        if isinstance(snap, dict) and snap.get("callId") == ctx.call_id:
            ctx.update(snap)
            return
        self._end_forgotten_call()

    def _end_forgotten_call(self) -> None:
        """End the local call the service no longer knows, with the event the application
        expects: onCallEnd for a connected call, onCallCancelled for one still ringing."""
        ctx = self._call
        if ctx is None:
            return
        if ctx.state is CallState.CONNECTED:
            began = ctx.began_at if ctx.began_at is not None else time.monotonic()
            payload: dict[str, Any] = {
                "roomID": ctx.room_id,
                "callMediaType": int(ctx.media_type),
                "callRole": int(ctx.role),
                "totalTime": max(0, round(time.monotonic() - began)),
            }
            name = "onCallEnd"
        else:
            payload, name = {"userId": str(self.user_id)}, "onCallCancelled"
        self._end_locally()
        self._events.emit(name, payload)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._spawn(client.close())

    async def _logout(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            if self._call is not None and client.connected:  # no 10 s wait on a dead link
                with contextlib.suppress(CallError):
                    await client.request(p.Hangup, call_id=self._call.call_id)
            self._end_locally()
            await client.close()

    async def destroy(self) -> None:
        """Hang up, close media and log out; idempotent."""
        self._destroyed = True
        await self._logout()
        self._end_locally()
        tasks = list(self._tasks)
        for task in tasks:
            if task in self._call_tasks:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._mesh.aclose()
        await self._events.aclose()
        self.user_id = None
