"""Encode once in a real group call, with a raw aiortc peer among the members.

alice (callkit) calls bob (a raw aiortc peer speaking the wire protocol by hand, as another
client implementation would) and carol (callkit) in a video group call. alice's two peer
connections share one Opus and one VP8 encoder; bob and carol must still hear and see her
the same: the same audio level, decodable frames of the same size and content.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callkit import CallEngine, CallMediaType
from callkit.media import TestPatternSource, ToneSource, icehooks
from callkit.media.tracks import LocalAudio
from callkit.media.volume import rms_dbfs
from callkit.recorder import EventRecorder

from .conftest import LOOPBACK, SDK_APP_ID, sig
from .helpers import recent_volume

pytestmark = pytest.mark.loopback

LEVEL = -20.0  # dBFS of every member's tone


class RawMember:
    """bob: the wire protocol by hand, one raw aiortc RTCPeerConnection per other member."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = iter(range(1, 1000))
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.levels: dict[str, list[float]] = {}
        self.video: dict[str, list[av.VideoFrame]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.audio = LocalAudio(ToneSource(660, LEVEL))  # only a paced tone source here
        self.call_id = ""

    async def request(self, type_: str, **fields: Any) -> None:
        await self.ws.send_json({"type": type_, "v": 1, "id": next(self.ids), **fields})

    def _pc(self, user: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs[user] = pc
        self.levels[user], self.video[user] = [], []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.ensure_future(self._read(user, track)))

        return pc

    async def _read(self, user: str, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    self.levels[user].append(rms_dbfs(frame.to_ndarray()))
                else:
                    self.video[user] = [*self.video[user][-4:], frame]
        except MediaStreamError:
            pass

    async def offer_to(self, user: str) -> None:
        pc = self._pc(user)
        pc.addTrack(self.audio.subscribe())
        pc.addTransceiver("video", direction="recvonly")
        icehooks.attach(pc, host_addresses=LOOPBACK)
        await pc.setLocalDescription(await pc.createOffer())
        data = {"sdp": pc.localDescription.sdp, "type": "offer"}
        await self.request("relay", callId=self.call_id, to=user, kind="offer", data=data)

    async def run(self) -> None:
        """Accept the call, offer to alice (already in), answer carol (joins later)."""
        async for msg in self.ws:
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "event" and data["event"] == "onCallReceived":
                self.call_id = data["callId"]
                await self.request("accept", callId=self.call_id)
                await self.offer_to("alice")
            elif kind == "relayed" and data["kind"] == "answer":
                await self.pcs[data["fromUser"]].setRemoteDescription(
                    RTCSessionDescription(**data["data"])
                )
            elif kind == "relayed" and data["kind"] == "offer":
                pc = self._pc(data["fromUser"])
                await pc.setRemoteDescription(RTCSessionDescription(**data["data"]))
                for t in pc.getTransceivers():
                    if t.kind == "audio":
                        t.sender.replaceTrack(self.audio.subscribe())
                        t.direction = "sendrecv"
                    else:
                        t.direction = "recvonly"
                icehooks.attach(pc, host_addresses=LOOPBACK)
                await pc.setLocalDescription(await pc.createAnswer())
                answer = {"sdp": pc.localDescription.sdp, "type": "answer"}
                await self.request(
                    "relay", callId=self.call_id, to=data["fromUser"], kind="answer", data=answer
                )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for pc in self.pcs.values():
            await pc.close()
        await self.audio.stop()


async def _until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
        await asyncio.sleep(0.1)


def _median_db(levels: list[float]) -> float:
    tail = [x for x in levels[-25:] if math.isfinite(x)]
    return float(np.median(tail)) if tail else -math.inf


async def test_raw_and_callkit_members_hear_and_see_a_shared_encoder_alike(server: Any) -> None:
    pattern = TestPatternSource(320, 240, 15)
    alice = CallEngine(
        server.url,
        ice_addresses=LOOPBACK,
        audio_source=ToneSource(440, LEVEL),
        video_source=pattern,
    )
    carol = CallEngine(server.url, ice_addresses=LOOPBACK, audio_source=ToneSource(550, LEVEL))
    arec = EventRecorder(alice, "alice")
    crec = EventRecorder(carol, "carol")
    carol_heard: list[Any] = []
    carol_saw: list[av.VideoFrame] = []
    await alice.init(SDK_APP_ID, "alice", sig("alice"))
    await carol.init(SDK_APP_ID, "carol", sig("carol"))
    carol.add_audio_tap("alice", lambda samples, rate: carol_heard.append(rms_dbfs(samples)))
    carol.add_video_tap("alice", lambda frame: carol_saw.append(frame))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        bob = RawMember(ws)
        await bob.request("login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"))
        runner = asyncio.ensure_future(bob.run())
        try:
            await alice.group_call(["bob", "carol"], "team", CallMediaType.VIDEO)
            await crec.wait_for("onCallReceived")
            await _until(lambda: "alice" in bob.pcs, "bob's offer to alice")
            await carol.accept()
            await _until(
                lambda: (
                    len(bob.levels.get("alice", ())) > 60
                    and len(bob.levels.get("carol", ())) > 60
                    and len(carol_heard) > 60
                    and bob.video.get("alice")
                    and len(carol_saw) > 5
                ),
                "media between all three",
            )
            # one encoder per source and codec settings on alice's side: VP8 for both peer
            # connections; Opus with in-band FEC for carol (her SDP asks for it), plain for bob
            mesh = alice._mesh
            plain, fec = sorted(mesh.audio_encoders.encoders, key=lambda e: e.inband_fec)
            assert fec.inband_fec and not plain.inband_fec
            (vp8,) = mesh.video_encoders.encoders
            for opus in (plain, fec):
                assert opus.frames_encoded <= mesh.local_audio.frames_sent + 1
            video = mesh.local_video
            assert video is not None and vp8.frames_encoded <= video.frames_sent + 1
            # bob (raw aiortc) and carol (callkit) hear alice alike, at the level she sends
            at_bob, at_carol = _median_db(bob.levels["alice"]), _median_db(carol_heard)
            assert abs(at_bob - LEVEL) < 1.5 and abs(at_carol - LEVEL) < 1.5, (at_bob, at_carol)
            # ... and alice hears bob and carol alike: her volume reports (-20 dBFS -> 80)
            await asyncio.sleep(1.6)
            heard = {u: recent_volume(arec, u) for u in ("bob", "carol")}
            assert all(abs(v - 80) <= 3 for v in heard.values()), heard
            # both see alice's video: same size, and the pattern's frame counter reads back
            seen_bob, seen_carol = bob.video["alice"][-1], carol_saw[-1]
            assert (seen_bob.width, seen_bob.height) == (320, 240)
            assert (seen_carol.width, seen_carol.height) == (320, 240)
            for frame in (seen_bob, seen_carol):
                count = TestPatternSource.decode_counter(frame)
                assert count is not None and 0 < count <= pattern.frames_read, count
        finally:
            runner.cancel()
            await bob.close()
            await alice.destroy()
            await carol.destroy()
