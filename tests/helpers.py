"""Small helpers shared by the loopback tests."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from callkit import PAYLOAD_KEYS, CallEngine, CallMediaType, CallParams
from callkit.media.peer import PeerSession
from callkit.media.receiver import AudioReceiver
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
