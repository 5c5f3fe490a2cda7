"""Loopback: network quality of real audio calls under simulated loss, delay and cut-offs.

Real SignalingServer, real CallEngines, real aiortc media over 127.0.0.1; the sender's
datagrams go through its NetworkShaper. The five steady-state cases run concurrently (one
call each) so the file stays well under a minute on two cores.

Expected levels (media/quality.py, loss-only cut-offs 2.5 / 4.3 / 6.7 / 10 %): 0 % ->
EXCELLENT, 3 % -> GOOD, 8 % -> BAD, 20 % -> VERY_BAD; 0 % loss with 400 ms one-way delay on
both engines (RTT ~800 ms, d ~400 ms, S ~66) -> POOR. The loss is random (no seed): each
report is compared with the level of the loss the simulator really applied to the sender's
datagrams over the run (``engine.network_counts``), within one level, because a report's
window of a few hundred packets differs from the whole run's realization.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass

import pytest

from callkit import CallMediaType, NetworkQuality
from callkit.media import NetworkConditions, NetworkCounts, ToneSource
from callkit.media.quality import quality
from callkit.recorder import EventRecorder

pytestmark = pytest.mark.loopback

Q = NetworkQuality


def quality_of(payload: dict, user: str) -> int:
    entries = {e["userId"]: e["quality"] for e in payload["networkQualityList"]}
    return entries[user]


def reports(rec: EventRecorder, since: float = 0.0) -> list[tuple[float, dict]]:
    return [
        (e.at, e.payload)
        for e in rec.events
        if e.event == "onUserNetworkQualityChanged" and e.at >= since
    ]


@dataclass
class Call:
    sender: object
    receiver: object
    rs: EventRecorder
    rr: EventRecorder
    s_id: str
    r_id: str
    connected_at: float = 0.0


#: how long a call in these tests may take to connect media
SETUP_S = 25.0


async def start_call(make_engine, name: str, *, sender_net=None, receiver_net=None) -> Call:
    s_id, r_id = f"{name}-sender", f"{name}-receiver"
    # setting up through 20 % loss can outlast the default 10 s media watchdog (DTLS backs
    # off per lost flight); this test measures levels, not setup time
    sender, rs = await make_engine(
        s_id,
        audio_source=ToneSource(440, level_dbfs=-20),
        network=sender_net,
        connect_timeout=SETUP_S,
    )
    receiver, rr = await make_engine(
        r_id,
        audio_source=ToneSource(660, level_dbfs=-20),
        network=receiver_net,
        connect_timeout=SETUP_S,
    )
    await sender.call(r_id, CallMediaType.AUDIO)
    await rr.wait_for("onCallReceived")
    await receiver.accept()
    await rs.wait_for("onCallBegin")
    await rr.wait_for("onCallBegin")
    call = Call(sender, receiver, rs, rr, s_id, r_id)
    deadline = time.monotonic() + SETUP_S
    while time.monotonic() < deadline:  # media connected both ways
        ps, pr = sender.peers.get(r_id), receiver.peers.get(s_id)
        if ps is not None and pr is not None and ps.connected.is_set() and pr.connected.is_set():
            call.connected_at = time.monotonic()
            return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: media did not connect")


async def steady_levels(make_engine, name: str, expected: int, **nets) -> tuple:
    """Run one call; return (receiver's view of the sender, sender's own entry) per report
    in the steady window (6-12 s after media connected), the simulator's counts of the
    sender's datagrams over the run, and the call for further checks."""
    call = await start_call(make_engine, name, **nets)
    start = call.sender.network_counts
    await asyncio.sleep(12.5)
    counts = call.sender.network_counts - start
    since = call.connected_at + 6.0
    viewed = [quality_of(p, call.s_id) for _, p in reports(call.rr, since)]
    own = [quality_of(p, call.s_id) for _, p in reports(call.rs, since)]
    await call.sender.hangup()
    return name, expected, viewed, own, counts, call


async def test_levels_follow_simulated_loss_and_delay(make_engine) -> None:
    # No seeds: the expected level of a loss case is the level of the loss the simulator
    # really realized (its own sent and dropped counts), not the nominal one. The nominal
    # level is listed for the delay case, where no datagram is dropped.
    delay = NetworkConditions(delay_ms=400)
    cases = [
        ("loss0", Q.EXCELLENT, {}),
        ("loss3", None, {"sender_net": NetworkConditions(loss=0.03)}),
        ("loss8", None, {"sender_net": NetworkConditions(loss=0.08)}),
        ("loss20", None, {"sender_net": NetworkConditions(loss=0.20)}),
        ("delay400", Q.POOR, {"sender_net": delay, "receiver_net": delay}),
    ]
    results = await asyncio.gather(
        *(steady_levels(make_engine, name, level, **nets) for name, level, nets in cases)
    )
    problems = []
    for name, nominal, viewed, own, counts, call in results:
        assert isinstance(counts, NetworkCounts) and counts.sent > 400, (name, counts)
        expected = nominal if nominal is not None else quality(None, None, 100 * counts.loss)
        line = (
            f"{name}: expected {expected!r} (simulator: {counts.dropped} of "
            f"{counts.sent + counts.dropped} datagrams dropped, {100 * counts.loss:.1f} %), "
            f"receiver saw {viewed}, sender's own {own}"
        )
        print(line)
        if len(viewed) < 2 or len(own) < 2:
            problems.append(f"too few reports: {line}")
            continue
        if any(abs(v - expected) > 1 for v in viewed + own):
            problems.append(line)
        if abs(statistics.median(viewed) - statistics.median(own)) > 1:
            problems.append(f"views disagree: {line}")
        for rec, me, other in ((call.rs, call.s_id, call.r_id), (call.rr, call.r_id, call.s_id)):
            for _, payload in reports(rec):  # one entry for us and one for the peer, always
                ids = [e["userId"] for e in payload["networkQualityList"]]
                assert ids == [me, other], payload
                assert all(
                    isinstance(e["quality"], int) and 0 <= e["quality"] <= 6
                    for e in payload["networkQualityList"]
                )
            times = [t for t, _ in reports(rec)]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert gaps and 1.7 < statistics.median(gaps) < 2.5, gaps  # every 2 s
    assert not problems, "\n".join(problems)


async def wait_level(rec: EventRecorder, user: str, ok, since: float, timeout: float) -> float:
    """Seconds from ``since`` until a report where ``ok(level of user)``; fails after timeout."""
    await rec.wait_for(
        "onUserNetworkQualityChanged",
        lambda p: ok(quality_of(p, user)) and _after(rec, p, since),
        timeout=timeout + 1.0,
    )
    at = next(t for t, p in reports(rec, since) if ok(quality_of(p, user)))
    return at - since


def _after(rec: EventRecorder, payload: dict, since: float) -> bool:
    return any(p is payload for _, p in reports(rec, since))


async def test_level_follows_changes_and_cut_off(make_engine) -> None:
    call = await start_call(make_engine, "follow")
    s, rr, rs, sid = call.sender, call.rr, call.rs, call.s_id
    await asyncio.sleep(5.0)
    assert quality_of(reports(rr)[-1][1], sid) <= Q.GOOD

    timings = {}
    t = time.monotonic()
    s.set_network_conditions(NetworkConditions(loss=0.2))
    timings["0->20% at receiver"] = await wait_level(rr, sid, lambda q: q >= Q.BAD, t, 6.0)
    timings["0->20% own"] = await wait_level(rs, sid, lambda q: q >= Q.BAD, t, 8.0)
    await asyncio.sleep(max(0.0, t + 7.0 - time.monotonic()))

    t = time.monotonic()
    s.set_network_conditions(NetworkConditions())
    timings["20->0% at receiver"] = await wait_level(rr, sid, lambda q: q <= Q.GOOD, t, 6.0)
    timings["20->0% own"] = await wait_level(rs, sid, lambda q: q <= Q.GOOD, t, 8.0)
    await asyncio.sleep(max(0.0, t + 5.0 - time.monotonic()))

    t = time.monotonic()
    s.set_network_conditions(NetworkConditions(loss=1.0))
    before_cut = s.network_counts  # the simulator's counts: nothing may leave during the cut
    timings["cut: DOWN at receiver"] = await wait_level(rr, sid, lambda q: q == Q.DOWN, t, 5.0)
    timings["cut: own DOWN"] = await wait_level(rs, sid, lambda q: q == Q.DOWN, t, 8.0)
    # the receiver itself is fine: missing reports from the sender are no evidence against it
    assert all(quality_of(p, call.r_id) != Q.DOWN for _, p in reports(rr, t))
    await asyncio.sleep(max(0.0, t + 7.0 - time.monotonic()))
    during = s.network_counts - before_cut
    assert during.sent == 0 and during.dropped > 300 and during.loss == 1.0  # RTP, RTCP, STUN

    t = time.monotonic()
    s.set_network_conditions(NetworkConditions())
    timings["uncut: back at receiver"] = await wait_level(rr, sid, lambda q: q <= Q.GOOD, t, 4.0)
    timings["uncut: own back"] = await wait_level(rs, sid, lambda q: q <= Q.GOOD, t, 6.0)
    print({k: round(v, 2) for k, v in timings.items()})
    assert timings["0->20% at receiver"] <= 6.0
    assert timings["20->0% at receiver"] <= 6.0
    assert timings["cut: DOWN at receiver"] <= 5.0
    await s.hangup()
