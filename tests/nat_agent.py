"""One laptop of the NAT tests: a CallEngine in its own process, run with ``ip netns exec``.

It logs in (no ICE options: host candidates of every interface plus the service's ICE
servers), then either places a call (``--call bob`` or ``--call bob,carol`` for a group call)
or accepts the first incoming one, sends a tone at ``--level`` dBFS, and prints JSON lines:
``{"ready": true}`` after login, ``{"event": name, "res": {...}}`` for each non-periodic event,
and finally ``{"result": {...}}`` with what it measured:

- ``connect_s``: from ``call()`` (caller) or ``accept()`` (callee) to the first decoded,
  audible audio frame of every other participant;
- ``volumes``: each other participant's median volume over the talk window;
- ``pairs``: each peer's selected ICE pair (type, local/remote type, RTT);
- ``cpu_s`` / ``wall_s``: this process's CPU time over the talk window;
- ``errors``: every onError payload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from callkit import CallEngine, CallMediaType
from callkit.media import ToneSource
from callkit.signaling.usersig import gen_user_sig

PERIODIC = ("onUserVoiceVolumeChanged", "onUserNetworkQualityChanged")


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def run(args: argparse.Namespace) -> int:
    peers = [p for p in (args.call or args.expect).split(",") if p]
    engine = CallEngine(
        args.url,
        audio_source=ToneSource(args.freq, level_dbfs=args.level),
        tls_ca_file=args.ca,
        connect_timeout=args.connect_timeout,
    )
    loop = asyncio.get_running_loop()
    first_audio: dict[str, float] = {}
    all_heard = asyncio.Event()
    errors: list[dict[str, Any]] = []
    failed = asyncio.Event()
    volumes: list[dict[str, int]] = []
    window = {"open": False}
    received = asyncio.Event()
    t0 = {"t": 0.0}

    def tap_for(user: str) -> Any:
        def tap(samples: np.ndarray, rate: int) -> None:
            if user in first_audio or not samples.size:
                return
            rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
            if rms > 32768 * 10 ** (-50 / 20):  # audible: above -50 dBFS
                first_audio[user] = loop.time()
                if all(p in first_audio for p in peers):
                    all_heard.set()

        return tap

    for user in peers:
        engine.add_audio_tap(user, tap_for(user))

    def on_any(name: str) -> Any:
        def listener(res: dict[str, Any]) -> None:
            if name == "onUserVoiceVolumeChanged":
                if window["open"]:
                    volumes.append(res["volumeMap"])
                return
            if name in PERIODIC:
                return
            emit({"event": name, "res": res, "t": round(loop.time() - t0["t"], 3)})
            if name == "onError":
                errors.append(res)
                failed.set()
            elif name == "onCallReceived":
                received.set()
            elif name in ("onCallEnd", "onCallCancelled"):
                failed.set()  # the call is over: stop waiting

        return listener

    for name in (
        "onError",
        "onCallReceived",
        "onCallBegin",
        "onCallEnd",
        "onUserJoin",
        "onUserLeave",
        "onCallCancelled",
        "onUserVoiceVolumeChanged",
        "onUserNetworkQualityChanged",
    ):
        engine.add_event_listener(name, on_any(name))  # type: ignore[arg-type]

    result: dict[str, Any] = {"user": args.user}
    try:
        await engine.init(
            args.sdk_app_id, args.user, gen_user_sig(args.sdk_app_id, args.secret, args.user)
        )
        emit({"ready": True, "iceServers": [s.urls for s in engine.ice_servers]})
        await asyncio.sleep(args.delay)
        if args.call:
            t0["t"] = loop.time()
            if len(peers) > 1:
                await engine.group_call(peers, "nat-group", CallMediaType.AUDIO)
            else:
                await engine.call(peers[0], CallMediaType.AUDIO)
        else:
            await asyncio.wait_for(received.wait(), args.timeout)
            t0["t"] = loop.time()
            await engine.accept()
        heard = asyncio.ensure_future(all_heard.wait())
        broke = asyncio.ensure_future(failed.wait())
        await asyncio.wait([heard, broke], timeout=args.timeout, return_when="FIRST_COMPLETED")
        heard.cancel()
        broke.cancel()
        result["connect_s"] = (
            round(max(first_audio.values()) - t0["t"], 3) if all_heard.is_set() else None
        )
        result["first_audio_s"] = {u: round(t - t0["t"], 3) for u, t in first_audio.items()}
        if all_heard.is_set():
            window["open"] = True
            cpu0, wall0 = time.process_time(), loop.time()
            await asyncio.sleep(args.talk)
            result["cpu_s"] = round(time.process_time() - cpu0, 3)
            result["wall_s"] = round(loop.time() - wall0, 3)
            window["open"] = False
        result["volumes"] = {
            u: statistics.median(v[u] for v in volumes if u in v) if volumes else None
            for u in peers
        }
        pairs = {}
        for user, session in engine.peers.items():
            pair = session.selected_pair()
            pairs[user] = None if pair is None else {
                "type": pair.type,
                "local_type": pair.local_type,
                "remote_type": pair.remote_type,
                "rtt_ms": None if pair.rtt_ms is None else round(pair.rtt_ms, 1),
            }  # fmt: skip
        result["pairs"] = pairs
        result["errors"] = errors
        emit({"result": result})
        await asyncio.sleep(args.linger)
    except Exception as exc:  # report, do not hang
        result["errors"] = [*errors, {"code": getattr(exc, "code", None), "msg": str(exc)}]
        emit({"result": result})
        return 1
    finally:
        await engine.destroy()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs on stderr")
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--sdk-app-id", type=int, default=1400000001)
    parser.add_argument("--ca", default=None, help="CA file the engine trusts for wss://")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="the engine's media watchdog (s)"
    )
    parser.add_argument("--call", default="", help="callee, or callees for a group call")
    parser.add_argument("--expect", default="", help="as callee: the other participants")
    parser.add_argument("--level", type=float, default=-20.0)
    parser.add_argument("--freq", type=float, default=440.0)
    parser.add_argument("--talk", type=float, default=2.0)
    parser.add_argument("--linger", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=25.0)
    parser.add_argument("--delay", type=float, default=0.0, help="wait after login (s)")
    args = parser.parse_args()
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(name)s %(message)s")
        logging.getLogger("aioice.turn").setLevel(logging.DEBUG)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
