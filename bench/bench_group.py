"""Group calls: CPU of one member of an N-person mesh, raw aiortc vs callkit (encode once).

One *member* runs in a child process pinned to one CPU and sends audio (a 440 Hz tone), or
audio and 640x480 video (a test pattern, ``--fps``, default 15), to the N - 1 others and
receives theirs. Its CPU (all threads, over a steady window) is what is measured:

* raw aiortc: the member's source goes through aiortc's ``MediaRelay`` to one
  ``RTCPeerConnection`` per other member, the way aiortc's examples fan a track out; every
  sender encodes for itself;
* callkit: the member is a ``CallEngine`` placing a group call through a ``SignalingServer``;
  its peer connections share one encoder per source (``callkit.media.encoding``).

The N - 1 others are the same load generator in both cases, in the parent process (pinned
to another CPU when there is one): raw aiortc peer connections whose senders all share one
encoder, so the parent stays light and sends the member the same streams either way. In the
callkit case they speak the signaling protocol (accept, then offer to the member).

Printed per N and media: the member's CPU (% of one core) raw and callkit, the ratio raw /
callkit, the frames the member decoded / frames the others decoded from the member, as a
fraction of what was sent (a CPU figure only counts when both are near 100 %), and how many
times aiortc's encoder ran per frame of the member's source (raw: once per peer connection).

Where the member's time goes (issue 14):

* ``--floor``: the same member's codec work alone, in a third child on the same CPU: aiortc's
  Opus encoder on one frame and its decoder on N - 1 packets every 20 ms, and with video
  aiortc's VP8 encoder on one 640x480 frame and N - 1 VP8 decoders every 1 / fps, paced in
  real time with nothing else running (no network, no threads). No member can use less;
* ``--threads``: the member's CPU by thread (event loop, encoder workers, aiortc's decoder
  threads), the CPU inside aiortc's ``encode()`` calls, how often aiortc (re)opened the VP8
  encoder (it does on every bitrate change of more than 10 %, with a keyframe), the encoders'
  output kbit/s, and callkit's video receive path counters;
* ``--profile PREFIX``: cProfile (CPU time of the event loop's thread) over the window, into
  ``PREFIX-raw.prof`` and ``PREFIX-callkit.prof`` (this inflates the CPU figures).

Run from the repo root:  python bench/bench_group.py [--quick] [--sizes 3 4 6 9] [--floor]
(--quick: sizes 3 and 4, a 3 s window; default 3, 4, 6, 9 and a 6 s window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench._common import until as _until
from callkit import CallEngine, CallMediaType
from callkit.media import TestPatternSource, ToneSource, icehooks
from callkit.media.encoding import EncoderPool
from callkit.media.tracks import LocalAudio, LocalVideo
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer
from callkit.signaling.usersig import gen_user_sig

LOOPBACK = ["127.0.0.1"]
APP_ID, SECRET = 1400000001, "bench-group-secret"
WIDTH, HEIGHT = 640, 480
SETUP_TIMEOUT = 60.0
AUDIO_FPS = 50


# ---------------------------------------------------------------------------- shared helpers


def _pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class _Counter:
    """Reads remote tracks in tasks and counts their frames by kind."""

    def __init__(self) -> None:
        self.frames = {"audio": 0, "video": 0}
        self._tasks: list[asyncio.Task[None]] = []

    def on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    await track.recv()
                    self.frames[track.kind] += 1
            except MediaStreamError:
                pass

        self._tasks.append(asyncio.ensure_future(read()))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


class _PatternTrack(MediaStreamTrack):
    """TestPatternSource frames paced at its fps (the raw member's camera)."""

    kind = "video"

    def __init__(self, fps: float) -> None:
        super().__init__()
        self._source = TestPatternSource(WIDTH, HEIGHT, fps)
        self._fps = fps
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> Any:
        import fractions

        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._n / self._fps - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self._source.read()
        frame.pts = round(self._n * 90000 / self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


class _ToneTrack(MediaStreamTrack):
    """callkit's LocalAudio frames for a raw peer connection (one subscriber)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._local = LocalAudio(ToneSource(440.0, -20.0))
        self._track = self._local.subscribe()

    async def recv(self) -> Any:
        return await self._track.recv()

    def stop(self) -> None:
        super().stop()
        self._track.stop()


# ------------------------------------------------------------------------ the load generator


class Others:
    """The N - 1 other members: raw peer connections sharing one encoder per source."""

    def __init__(self, video: bool, fps: float) -> None:
        self.audio = LocalAudio(ToneSource(523.0, -20.0))
        self.video = LocalVideo(TestPatternSource(WIDTH, HEIGHT, fps)) if video else None
        self.pools = {"audio": EncoderPool(), "video": EncoderPool()}
        self.counter = _Counter()
        self.pcs: list[RTCPeerConnection] = []

    def new_pc(self) -> RTCPeerConnection:
        pc = _pc()
        self.pcs.append(pc)
        pc.on("track", self.counter.on_track)
        return pc

    def add_tracks(self, pc: RTCPeerConnection, *, offering: bool) -> None:
        """Send our sources on pc's transceivers (existing ones after an offer, else new)."""
        sources = [("audio", self.audio)] + ([("video", self.video)] if self.video else [])
        for kind, local in sources:
            t = next((t for t in pc.getTransceivers() if t.kind == kind), None)
            if t is None:
                t = pc.addTransceiver(kind, direction="sendrecv")
            t.direction = "sendrecv"
            t.sender.replaceTrack(local.subscribe())  # type: ignore[union-attr]
            self.pools[kind].attach(t.sender)
        if self.video is None and offering:  # callkit negotiates audio and video
            pc.addTransceiver("video", direction="recvonly")

    async def answer(self, offer: dict[str, str]) -> dict[str, str]:
        pc = self.new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(**offer))
        self.add_tracks(pc, offering=False)
        icehooks.attach(pc, host_addresses=LOOPBACK)
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def close(self) -> None:
        self.counter.stop()
        await asyncio.gather(*(pc.close() for pc in self.pcs), return_exceptions=True)
        await self.audio.stop()
        if self.video is not None:
            await self.video.stop()


# ------------------------------------------------------------------------------ the member


#: encoder runs in the member process, by kind (aiortc's encoders, counted, see _count)
ENCODES = {"audio": 0, "video": 0, "video_opened": 0, "audio_bytes": 0, "video_bytes": 0}
#: the VP8 encoders' target bitrates, each time aiortc (re)opened one
BITRATES: list[int] = []
#: CPU seconds spent in those encoders, by kind
ENCODE_CPU = {"audio": 0.0, "video": 0.0}


def _count_encodes() -> None:
    """Count every run of aiortc's Opus and VP8 encoders in this process (raw or shared),
    and of callkit's libopus encoder (the pushed audio of callkit's senders)."""
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    for cls, kind in ((OpusEncoder, "audio"), (Vp8Encoder, "video")):
        orig = cls.encode

        def encode(self: Any, frame: Any, force: bool = False, *, _o=orig, _k=kind) -> Any:
            ENCODES[_k] += 1
            before = getattr(self, "codec", None)
            t0 = time.thread_time()
            out = _o(self, frame, force)
            ENCODE_CPU[_k] += time.thread_time() - t0
            ENCODES[f"{_k}_bytes"] += sum(len(p) for p in out[0])
            if _k == "video" and self.codec is not before:
                ENCODES["video_opened"] += 1  # aiortc re-opens VP8 on a bitrate change
                BITRATES.append(self.target_bitrate)
            return out

        cls.encode = encode  # type: ignore[method-assign]

    from callkit.media.opus import OpusEncoder as LibOpusEncoder  # callkit's pushed audio

    orig_libopus = LibOpusEncoder.encode

    def encode_libopus(self: Any, samples: Any) -> bytes:
        ENCODES["audio"] += 1
        t0 = time.thread_time()
        out = orig_libopus(self, samples)
        ENCODE_CPU["audio"] += time.thread_time() - t0
        ENCODES["audio_bytes"] += len(out)
        return out

    LibOpusEncoder.encode = encode_libopus  # type: ignore[method-assign]


def _thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process's live threads, by thread name (digits and
    trailing ``_N`` dropped, so aiortc's decoder threads and the executor's workers add up)."""
    import re
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"[_-]?\d+$", "", thread.name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def _measure(
    frames: Callable[[], dict[str, int]], warmup: float, window: float, fps: float
) -> dict:
    await asyncio.sleep(warmup)
    print(json.dumps({"window": "start"}), flush=True)  # the parent counts over it too
    f0, e0, c0, t0 = dict(frames()), dict(ENCODES), time.process_time(), time.monotonic()
    th0, ec0 = _thread_cpu(), dict(ENCODE_CPU)
    profiler = None
    if os.environ.get("BENCH_GROUP_PROFILE"):  # --profile: the event loop's thread only
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU of the loop thread, not wall
        profiler.enable()
    await asyncio.sleep(window)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ["BENCH_GROUP_PROFILE"] + f"-{sys.argv[2]}.prof")
    f1, e1, c1, t1 = dict(frames()), dict(ENCODES), time.process_time(), time.monotonic()
    th1, ec1 = _thread_cpu(), dict(ENCODE_CPU)
    wall = t1 - t0
    rates = {"audio": AUDIO_FPS, "video": fps}
    return {
        "cpu": (c1 - c0) / wall * 100,
        # % of a core by thread (threads that started or ended inside the window are partial)
        "threads": {k: (v - th0.get(k, 0.0)) / wall * 100 for k, v in th1.items()},
        "received": {k: (f1[k] - f0[k]) / wall for k in f1},
        # encoder runs per frame of the member's own source (raw: one per peer connection)
        "encodes": {k: (e1[k] - e0[k]) / wall / rates[k] for k in rates},
        "encoder_opened": e1["video_opened"] - e0["video_opened"],
        # kbit/s out of the encoders (all of them: raw encodes once per peer)
        "encoded_kbps": {k: (e1[f"{k}_bytes"] - e0[f"{k}_bytes"]) * 8 / wall / 1000 for k in rates},
        "vp8_bitrates": BITRATES[-4:],
        # % of a core in aiortc's encode() calls, by kind
        "encode_cpu": {k: (ec1[k] - ec0[k]) / wall * 100 for k in ec1},
        "wall": wall,
    }


async def member_raw(n: int, video: bool, fps: float, warmup: float, window: float) -> None:
    """Child: a raw aiortc member; offers over stdout, answers over stdin."""
    relay = MediaRelay()
    tone = _ToneTrack()
    camera = _PatternTrack(fps) if video else None
    counter = _Counter()
    pcs = []
    offers = []
    for _ in range(n - 1):
        pc = _pc()
        pcs.append(pc)
        pc.on("track", counter.on_track)
        pc.addTrack(relay.subscribe(tone))
        if camera is not None:
            pc.addTrack(relay.subscribe(camera))
        else:
            pc.addTransceiver("video", direction="recvonly")
        icehooks.attach(pc, host_addresses=LOOPBACK)
        await pc.setLocalDescription(await pc.createOffer())
        offers.append({"sdp": pc.localDescription.sdp, "type": "offer"})
    print(json.dumps({"offers": offers}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for pc, answer in zip(pcs, json.loads(line)["answers"], strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
    await _until(lambda: counter.frames["audio"] > 0, "raw member receiving")
    result = await _measure(lambda: counter.frames, warmup, window, fps)
    print(json.dumps({"result": result}), flush=True)
    counter.stop()
    await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


async def member_callkit(
    n: int, video: bool, fps: float, warmup: float, window: float, url: str
) -> None:
    """Child: a callkit member placing a group call to l1 .. l(n-1)."""
    engine = CallEngine(
        url,
        audio_source=ToneSource(440.0, -20.0),
        video_source=TestPatternSource(WIDTH, HEIGHT, fps) if video else None,
        ice_addresses=LOOPBACK,
    )
    rec = EventRecorder(engine, "m")
    await engine.init(APP_ID, "m", gen_user_sig(APP_ID, SECRET, "m"))
    media = CallMediaType.VIDEO if video else CallMediaType.AUDIO
    await engine.group_call([f"l{i}" for i in range(1, n)], "bench", media)

    def frames() -> dict[str, int]:
        out = {"audio": 0, "video": 0}
        for session in engine.peers.values():
            if session.remote_audio is not None:
                out["audio"] += session.remote_audio.frames_received
            if session.remote_video is not None:
                out["video"] += session.remote_video.frames_received
        return out

    await _until(
        lambda: (
            len(engine.peers) == n - 1
            and all(s.remote_audio is not None for s in engine.peers.values())
        ),
        "callkit member receiving from everyone",
    )
    result = await _measure(frames, warmup, window, fps)
    paths = [p for p in (getattr(s, "video_receiver", None) for s in engine.peers.values()) if p]
    result["video_paths"] = {
        k: sum(getattr(p, k) for p in paths)
        for k in ("decoded_inline", "decoded_offloaded", "failed", "dropped")
    }
    result["video_paths"]["longest_inline_ms"] = max(
        (p.longest_inline * 1000 for p in paths), default=0.0
    )
    print(json.dumps({"result": result}), flush=True)
    del rec
    await engine.destroy()


async def member_floor(n: int, video: bool, fps: float, warmup: float, window: float) -> None:
    """Child: the member's codec work alone, paced in real time in one thread with nothing
    else: aiortc's Opus encoder on one 20 ms frame and its decoder on n - 1 packets every
    20 ms; with video, aiortc's VP8 encoder on one 640x480 test pattern frame and n - 1 VP8
    decoders on one frame each every 1 / fps (the others' streams, encoded beforehand).
    Its CPU is what no implementation of the mesh member can go below with these codecs."""
    import fractions

    import av
    import numpy as np
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    def tone(freq: float, i: int) -> av.AudioFrame:
        t = (np.arange(960) + i * 960) / 48000
        mono = np.rint(3276.7 * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        return frame

    # what the member sends (made beforehand: the source is not the codec) and receives
    mine_audio = [tone(440.0, i) for i in range(50)]
    others_enc = OpusEncoder()
    others_audio = [b"".join(others_enc.encode(tone(523.0, i))[0]) for i in range(50)]
    pattern = TestPatternSource(WIDTH, HEIGHT, fps)
    mine_video = [pattern.read() for _ in range(int(4 * fps))]
    others_video: list[bytes] = []
    video_enc = Vp8Encoder()
    for i, frame in enumerate(TestPatternSource(WIDTH, HEIGHT, fps).read() for _ in mine_video):
        frame.pts, frame.time_base = i * 6000, fractions.Fraction(1, 90000)
        payloads, _ = video_enc.encode(frame)
        others_video.append(b"".join(vp8_depayload(p) for p in payloads))
    opus_enc, vp8_enc = OpusEncoder(), Vp8Encoder()
    opus_decs = [OpusDecoder() for _ in range(n - 1)]
    vp8_decs = [Vp8Decoder() for _ in range(n - 1)] if video else []
    decoded = {"audio": 0, "video": 0}

    async def pace(period: float, tick: Callable[[int], None]) -> None:
        loop = asyncio.get_running_loop()
        start, i = loop.time(), 0
        while True:
            tick(i)
            i += 1
            await asyncio.sleep(max(0.0, start + i * period - loop.time()))

    def audio_tick(i: int) -> None:
        frame = mine_audio[i % len(mine_audio)]
        frame.pts = i * 960
        opus_enc.encode(frame)
        for dec in opus_decs:
            data = others_audio[i % len(others_audio)]
            decoded["audio"] += len(dec.decode(JitterFrame(data, i * 960)))

    def video_tick(i: int) -> None:
        frame = mine_video[i % len(mine_video)]
        frame.pts, frame.time_base = i * 6000, fractions.Fraction(1, 90000)
        vp8_enc.encode(frame)
        for dec in vp8_decs:  # the first frame is the keyframe; the stream then loops
            data = others_video[i % len(others_video)]
            decoded["video"] += len(dec.decode(JitterFrame(data, i * 6000)))

    tasks = [asyncio.ensure_future(pace(1 / AUDIO_FPS, audio_tick))]
    if video:
        tasks.append(asyncio.ensure_future(pace(1 / fps, video_tick)))
    result = await _measure(lambda: decoded, warmup, window, fps)
    print(json.dumps({"result": result}), flush=True)
    for task in tasks:
        task.cancel()


# -------------------------------------------------------------------------------- the parent


async def _child(args: list[str], cpu: int | None) -> asyncio.subprocess.Process:
    cmd = [sys.executable, os.path.abspath(__file__), "--member", *args]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def _read_json(proc: asyncio.subprocess.Process, timeout: float) -> dict:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the member process ended early")
        if line.startswith(b"{"):
            return json.loads(line)


async def run_raw(n: int, video: bool, fps: float, warmup: float, window: float, cpu: int | None):
    others = Others(video, fps)
    proc = await _child(["raw", str(n), str(int(video)), str(fps), str(warmup), str(window)], cpu)
    try:
        offers = (await _read_json(proc, SETUP_TIMEOUT))["offers"]
        answers = [await others.answer(o) for o in offers]
        assert proc.stdin is not None
        proc.stdin.write((json.dumps({"answers": answers}) + "\n").encode())
        await proc.stdin.drain()
        return await _window(proc, others, n, video, fps, warmup + window)
    finally:
        await _reap(proc)
        await others.close()


async def run_floor(
    n: int, video: bool, fps: float, warmup: float, window: float, cpu: int | None
) -> dict:
    """The member's codec work alone (:func:`member_floor`), on the member's CPU."""
    proc = await _child(["floor", str(n), str(int(video)), str(fps), str(warmup), str(window)], cpu)
    try:
        await _read_json(proc, SETUP_TIMEOUT + warmup)  # {"window": "start"}
        return (await _read_json(proc, SETUP_TIMEOUT + window))["result"]
    finally:
        await _reap(proc)


async def run_callkit(
    n: int, video: bool, fps: float, warmup: float, window: float, cpu: int | None
):
    server = SignalingServer(sdk_app_id=APP_ID, secret_key=SECRET)
    await server.start("127.0.0.1", 0)
    assert server.url is not None
    others = Others(video, fps)
    http = aiohttp.ClientSession()
    socks = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for i in range(1, n):
            user = f"l{i}"
            ws = await http.ws_connect(server.url)
            socks.append(ws)
            await ws.send_json(
                {
                    "type": "login",
                    "v": 1,
                    "id": 1,
                    "sdkAppId": APP_ID,
                    "userId": user,
                    "userSig": gen_user_sig(APP_ID, SECRET, user),
                }
            )
            tasks.append(asyncio.ensure_future(_loadgen_user(ws, others)))
        proc = await _child(
            ["callkit", str(n), str(int(video)), str(fps), str(warmup), str(window), server.url],
            cpu,
        )
        try:
            return await _window(proc, others, n, video, fps, warmup + window)
        finally:
            await _reap(proc)
    finally:
        for task in tasks:
            task.cancel()
        for ws in socks:
            await ws.close()
        await http.close()
        await others.close()
        await server.stop()


async def _loadgen_user(ws: aiohttp.ClientWebSocketResponse, others: Others) -> None:
    """One of the others over the wire protocol: accept the call, offer to the member."""
    ids = iter(range(2, 1_000_000))
    pc: RTCPeerConnection | None = None
    async for msg in ws:
        data = json.loads(msg.data)
        if data.get("type") == "event" and data.get("event") == "onCallReceived":
            call_id = data["callId"]
            await ws.send_json({"type": "accept", "v": 1, "id": next(ids), "callId": call_id})
            pc = others.new_pc()
            others.add_tracks(pc, offering=True)
            icehooks.attach(pc, host_addresses=LOOPBACK)
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            relay = {"callId": call_id, "to": "m", "kind": "offer", "data": offer}
            await ws.send_json({"type": "relay", "v": 1, "id": next(ids), **relay})
        elif data.get("type") == "relayed" and data.get("kind") == "answer" and pc is not None:
            await pc.setRemoteDescription(RTCSessionDescription(**data["data"]))


async def _window(
    proc: asyncio.subprocess.Process, others: Others, n: int, video: bool, fps: float, t: float
) -> tuple[dict, dict]:
    """The member's result, and the fractions delivered over its window: what the member
    decoded, and what the others decoded of what it sent."""
    await _read_json(proc, SETUP_TIMEOUT + t)  # {"window": "start"}
    before, t0 = dict(others.counter.frames), time.monotonic()
    result = (await _read_json(proc, SETUP_TIMEOUT + t))["result"]
    seconds, got = time.monotonic() - t0, others.counter.frames
    rates = {"audio": AUDIO_FPS, "video": fps}
    kinds = ["audio", "video"] if video else ["audio"]
    member = {k: result["received"][k] / ((n - 1) * rates[k]) for k in kinds}
    out = {k: (got[k] - before[k]) / seconds / ((n - 1) * rates[k]) for k in kinds}
    return result, {"member": member, "others": out}


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def _cpus() -> tuple[int | None, int | None]:
    """(member CPU, parent CPU): the last two allowed CPUs (None, None with one)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[-1], allowed[-2]


async def main(
    sizes: list[int],
    kinds: list[str],
    fps: float,
    warmup: float,
    window: float,
    threads: bool = False,
    floor: bool = False,
):
    member_cpu, parent_cpu = _cpus()
    if parent_cpu is not None:
        os.sched_setaffinity(0, {parent_cpu})
    print(
        f"member pinned to CPU {member_cpu}, the others to CPU {parent_cpu}; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; video {WIDTH}x{HEIGHT} at "
        f"{fps:g} fps; window {window:g} s after {warmup:g} s"
    )
    print(
        f"{'media':>5} {'N':>2} | {'raw cpu':>8} {'callkit cpu':>11} {'ratio':>6} | "
        f"{'raw in/out':>13} {'callkit in/out':>15} | encodes/frame raw callkit"
    )
    for kind in kinds:
        video = kind == "video"
        for n in sizes:
            raw, raw_share = await run_raw(n, video, fps, warmup, window, member_cpu)
            ck, ck_share = await run_callkit(n, video, fps, warmup, window, member_cpu)
            k = "video" if video else "audio"

            def io(share: dict, k: str = k) -> str:
                return f"{share['member'][k]:.0%}/{share['others'][k]:.0%}"

            print(
                f"{kind:>5} {n:>2} | {raw['cpu']:>7.1f}% {ck['cpu']:>10.1f}% "
                f"{raw['cpu'] / ck['cpu']:>5.2f}x | {io(raw_share):>13} {io(ck_share):>15} | "
                f"{raw['encodes'][k]:>17.2f} {ck['encodes'][k]:>7.2f}",
                flush=True,
            )
            if floor:
                low = await run_floor(n, video, fps, warmup, window, member_cpu)
                print(
                    f"{'':>8} floor (the codecs alone, paced): {low['cpu']:.1f}%; raw / floor "
                    f"{raw['cpu'] / low['cpu']:.2f}x, callkit / floor "
                    f"{ck['cpu'] / low['cpu']:.2f}x",
                    flush=True,
                )
            if threads:
                print(f"{'':>8} callkit video decode: {ck.get('video_paths')}", flush=True)
                for name, result in (("raw", raw), ("callkit", ck)):
                    enc = ", ".join(f"{k} {v:.1f}%" for k, v in result["encode_cpu"].items())
                    print(
                        f"{'':>8} {name} in encode(): {enc}; VP8 encoder (re)opened "
                        f"{result['encoder_opened']} times (last at {result['vp8_bitrates']} bps); "
                        f"encoded kbit/s {result['encoded_kbps']}",
                        flush=True,
                    )
                    parts = sorted(result["threads"].items(), key=lambda kv: -kv[1])
                    shown = ", ".join(f"{t} {v:.1f}%" for t, v in parts if v >= 0.05)
                    print(f"{'':>8} {name} threads: {shown}", flush=True)


def _member_main(argv: list[str]) -> None:
    if "--cpu" in argv:
        i = argv.index("--cpu")
        os.sched_setaffinity(0, {int(argv[i + 1])})
        argv = argv[:i] + argv[i + 2 :]
    mode, n, video, fps, warmup, window, *rest = argv
    args = (int(n), video == "1", float(fps), float(warmup), float(window))
    _count_encodes()
    if mode == "raw":
        asyncio.run(member_raw(*args))
    elif mode == "floor":
        asyncio.run(member_floor(*args))
    else:
        asyncio.run(member_callkit(*args, rest[0]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        _member_main(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 3 and 4, a 3 s window")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the group sizes")
    parser.add_argument("--media", choices=["audio", "video"], nargs="*", help="default both")
    parser.add_argument("--fps", type=float, default=15.0, help="video frame rate (default 15)")
    parser.add_argument(
        "--threads", action="store_true", help="also print the member's CPU by thread"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure the member's codec work alone (encode 1, decode N - 1, paced)",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="cProfile the member's event loop over the window (inflates its CPU figure) into "
        "PREFIX-raw.prof / PREFIX-callkit.prof",
    )
    args = parser.parse_args()
    if args.profile:
        os.environ["BENCH_GROUP_PROFILE"] = os.path.abspath(args.profile)
    sizes = args.sizes or ([3, 4] if args.quick else [3, 4, 6, 9])
    warmup, window = (1.5, 3.0) if args.quick else (3.0, 6.0)
    asyncio.run(
        main(
            sizes,
            args.media or ["audio", "video"],
            args.fps,
            warmup,
            window,
            args.threads,
            args.floor,
        )
    )
