"""NetworkShaper unit tests (fake transport) and loopback tests with real aiortc peers."""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import AudioStreamTrack

from callkit.media import icehooks
from callkit.media.netsim import MAX_QUEUE_DELAY, NetworkConditions, NetworkShaper
from callkit.media.rtcstats import snapshot_from_report

ADDR = ("127.0.0.1", 9)


class FakeTransport:
    """Records what the shaper sends, with the loop time of each send."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes, Any]] = []
        self.closing = False

    def sendto(self, data: bytes, addr: Any = None) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = 0.0
        self.sent.append((now, data, addr))

    def is_closing(self) -> bool:
        return self.closing


def pattern(shaper: NetworkShaper, n: int) -> list[bool]:
    """Send n datagrams; return for each whether it was dropped (ideal delay only)."""
    out = []
    t = FakeTransport()
    for i in range(n):
        before = shaper.dropped
        shaper.send(t, i.to_bytes(4, "big"), ADDR)
        out.append(shaper.dropped > before)
    return out


def runs(dropped: list[bool]) -> list[int]:
    lengths, cur = [], 0
    for d in dropped:
        if d:
            cur += 1
        elif cur:
            lengths.append(cur)
            cur = 0
    if cur:
        lengths.append(cur)
    return lengths


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"loss": -0.1}, "-0.1"),
        ({"loss": 1.5}, "1.5"),
        ({"loss": float("nan")}, "nan"),
        ({"burst": 1.0}, "1.0"),
        ({"burst": -0.5}, "-0.5"),
        ({"delay_ms": -1}, "-1"),
        ({"delay_ms": float("inf")}, "inf"),
        ({"jitter_ms": -3.0}, "-3.0"),
        ({"rate_kbps": 0}, "0"),
        ({"rate_kbps": -64}, "-64"),
        ({"seed": 1.5}, "1.5"),
    ],
)
def test_conditions_validation_quotes_value(kwargs: dict, bad: str) -> None:
    field = next(iter(kwargs))
    with pytest.raises(ValueError, match=re.escape(field) + ".*" + re.escape(bad)):
        NetworkConditions(**kwargs)


def test_conditions_defaults_are_ideal() -> None:
    assert NetworkConditions().is_ideal
    assert not NetworkConditions(loss=0.01).is_ideal
    assert not NetworkConditions(rate_kbps=100).is_ideal
    assert NetworkConditions(loss=1.0, burst=0.5).loss == 1.0


def test_set_conditions_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        NetworkShaper().set_conditions({"loss": 0.1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shaper


def test_ideal_passthrough_is_immediate_without_a_loop() -> None:
    shaper, t = NetworkShaper(), FakeTransport()
    for i in range(100):
        shaper.send(t, bytes([i]), ADDR)
    assert [d for _, d, _ in t.sent] == [bytes([i]) for i in range(100)]
    assert t.sent[0][2] == ADDR
    assert (shaper.sent, shaper.dropped, shaper.delayed) == (100, 0, 0)


@pytest.mark.parametrize("loss", [0.05, 0.2, 0.5])
def test_drop_ratio_matches_loss(loss: float) -> None:
    shaper = NetworkShaper(NetworkConditions(loss=loss, seed=11))
    dropped = pattern(shaper, 10_000)
    ratio = sum(dropped) / len(dropped)
    assert abs(ratio - loss) < 0.015
    assert shaper.sent + shaper.dropped == 10_000


def test_total_and_no_loss() -> None:
    assert all(pattern(NetworkShaper(NetworkConditions(loss=1.0, seed=1)), 1000))
    assert all(pattern(NetworkShaper(NetworkConditions(loss=1.0, burst=0.3)), 1000))
    assert not any(pattern(NetworkShaper(NetworkConditions(loss=0.0, burst=0.9, seed=1)), 1000))


def test_seeded_runs_repeat() -> None:
    a = pattern(NetworkShaper(NetworkConditions(loss=0.3, burst=0.5, seed=42)), 2000)
    b = pattern(NetworkShaper(NetworkConditions(loss=0.3, burst=0.5, seed=42)), 2000)
    c = pattern(NetworkShaper(NetworkConditions(loss=0.3, burst=0.5, seed=43)), 2000)
    assert a == b
    assert a != c
    # re-applying a seeded condition restarts the sequence
    shaper = NetworkShaper(NetworkConditions(loss=0.3, burst=0.5, seed=42))
    pattern(shaper, 123)
    shaper.set_conditions(NetworkConditions(loss=0.3, burst=0.5, seed=42))
    assert pattern(shaper, 2000) == a


def test_burst_lengthens_loss_runs_but_keeps_average() -> None:
    indep = pattern(NetworkShaper(NetworkConditions(loss=0.1, seed=5)), 20_000)
    bursty = pattern(NetworkShaper(NetworkConditions(loss=0.1, burst=0.8, seed=5)), 20_000)
    mean_indep = sum(runs(indep)) / len(runs(indep))
    mean_bursty = sum(runs(bursty)) / len(runs(bursty))
    assert mean_indep == pytest.approx(1 / 0.9, rel=0.1)  # Bernoulli: 1/(1-loss)
    assert mean_bursty == pytest.approx(1 / (1 - 0.8), rel=0.2)  # 1/(1-burst) = 5
    assert abs(sum(bursty) / len(bursty) - 0.1) < 0.03


async def test_delay_applied() -> None:
    loop = asyncio.get_running_loop()
    shaper, t = NetworkShaper(NetworkConditions(delay_ms=100)), FakeTransport()
    start = loop.time()
    for i in range(5):
        shaper.send(t, bytes([i]), ADDR)
    assert t.sent == [] and shaper.delayed == 5
    await asyncio.sleep(0.06)
    assert t.sent == []
    await asyncio.sleep(0.1)
    assert [d for _, d, _ in t.sent] == [bytes([i]) for i in range(5)]
    assert all(0.095 <= when - start < 0.15 for when, _, _ in t.sent)
    assert shaper.sent == 5


async def test_jitter_spreads_delay_within_bounds() -> None:
    loop = asyncio.get_running_loop()
    shaper = NetworkShaper(NetworkConditions(delay_ms=50, jitter_ms=30, seed=3))
    t = FakeTransport()
    start = loop.time()
    for i in range(200):
        shaper.send(t, bytes([i % 256]), ADDR)
    await asyncio.sleep(0.2)
    delays = [when - start for when, _, _ in t.sent]
    assert len(delays) == 200
    assert min(delays) >= 0.019 and max(delays) < 0.1
    assert max(delays) - min(delays) > 0.04  # actually spread, not constant


async def test_rate_cap_serialises_and_drops_when_queue_full() -> None:
    loop = asyncio.get_running_loop()
    # 1000-byte datagrams at 80 kbit/s take 100 ms each on the "wire"
    shaper = NetworkShaper(NetworkConditions(rate_kbps=80))
    t = FakeTransport()
    start = loop.time()
    for _ in range(20):
        shaper.send(t, b"x" * 1000, ADDR)
    accepted = 20 - shaper.dropped
    # waits of 0, 0.1, ..., 0.5 s fit the 500 ms queue; the rest overflow
    assert accepted in (int(MAX_QUEUE_DELAY / 0.1), int(MAX_QUEUE_DELAY / 0.1) + 1)
    assert shaper.overflowed == shaper.dropped == 20 - accepted
    await asyncio.sleep(0.1 * accepted + 0.1)
    times = [when - start for when, _, _ in t.sent]
    assert len(times) == accepted
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.04 < g < 0.3 for g in gaps), gaps  # timers fire late on a loaded machine
    assert 0.09 < statistics.median(gaps) < 0.13, gaps
    # delivered throughput never exceeds the cap
    bits = 8 * 1000 * len(times)
    assert bits / times[-1] <= 80_000 * 1.05


async def test_rate_cap_limits_sustained_throughput() -> None:
    loop = asyncio.get_running_loop()
    shaper = NetworkShaper(NetworkConditions(rate_kbps=200))
    t = FakeTransport()
    start = loop.time()
    while loop.time() - start < 1.0:  # offer ~400 kbit/s for one second
        shaper.send(t, b"y" * 500, ADDR)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    elapsed = loop.time() - start
    delivered_bits = 8 * sum(len(d) for _, d, _ in t.sent)
    assert delivered_bits / elapsed <= 200_000 * 1.1
    assert delivered_bits / elapsed >= 200_000 * 0.6
    assert shaper.overflowed > 0


async def test_conditions_change_mid_stream() -> None:
    shaper, t = NetworkShaper(), FakeTransport()
    pattern(shaper, 10)
    shaper.set_conditions(NetworkConditions(loss=1.0))
    assert all(pattern(shaper, 10))
    shaper.set_conditions(NetworkConditions(delay_ms=20))
    shaper.send(t, b"late", ADDR)
    assert t.sent == []
    shaper.set_conditions(NetworkConditions())
    shaper.send(t, b"now", ADDR)
    assert [d for _, d, _ in t.sent] == [b"now"]
    await asyncio.sleep(0.05)
    assert [d for _, d, _ in t.sent] == [b"now", b"late"]


async def test_delayed_datagram_to_closed_transport_is_discarded() -> None:
    shaper, t = NetworkShaper(NetworkConditions(delay_ms=10)), FakeTransport()
    shaper.send(t, b"a", ADDR)
    t.closing = True
    await asyncio.sleep(0.03)
    assert t.sent == [] and shaper.sent == 0


# --------------------------------------------------------------------------- loopback


class Pair:
    """Two in-process aiortc peers on 127.0.0.1, offerer sending audio to the answerer."""

    def __init__(self, c1: NetworkConditions | None = None, c2: NetworkConditions | None = None):
        self.s1, self.s2 = NetworkShaper(c1), NetworkShaper(c2)
        self.pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.hole = MediaBlackhole()
        self.pc1.addTrack(AudioStreamTrack())
        self.pc2.on("track", self.hole.addTrack)

    async def negotiate(self) -> None:
        icehooks.attach(self.pc1, host_addresses=["127.0.0.1"], shaper=self.s1)
        icehooks.attach(self.pc1, host_addresses=["127.0.0.1"], shaper=self.s1)  # twice: ok
        await self.pc1.setLocalDescription(await self.pc1.createOffer())
        await self.pc2.setRemoteDescription(self.pc1.localDescription)
        icehooks.attach(self.pc2, host_addresses=["127.0.0.1"], shaper=self.s2)
        await self.pc2.setLocalDescription(await self.pc2.createAnswer())
        await self.pc1.setRemoteDescription(self.pc2.localDescription)
        await self.hole.start()

    async def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pc1.connectionState == "connected" == self.pc2.connectionState:
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        await self.hole.stop()
        await self.pc1.close()
        await self.pc2.close()


@pytest.fixture
async def pairs():
    made: list[Pair] = []

    def make(*args: Any) -> Pair:
        made.append(Pair(*args))
        return made[-1]

    yield make
    for p in made:
        await p.close()


def candidate_hosts(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def test_loopback_only_and_total_loss_never_connects(pairs) -> None:
    pair = pairs(NetworkConditions(loss=1.0))
    await pair.negotiate()
    assert candidate_hosts(pair.pc1.localDescription.sdp) == {"127.0.0.1"}
    assert candidate_hosts(pair.pc2.localDescription.sdp) == {"127.0.0.1"}
    assert not await pair.wait_connected(5.0)
    assert pair.pc1.connectionState != "connected"
    assert pair.s1.sent == 0 and pair.s1.dropped > 0  # ICE checks were tried and dropped
    assert pair.s2.sent > 0


async def test_loss_shows_in_receiver_stats(pairs) -> None:
    pair = pairs()
    await pair.negotiate()
    assert await pair.wait_connected(10.0)
    for local, remote in icehooks.selected_pairs(pair.pc1) + icehooks.selected_pairs(pair.pc2):
        assert local[0] == remote[0] == "127.0.0.1"
    await asyncio.sleep(0.3)
    before, _ = snapshot_from_report(await pair.pc2.getStats())
    _, out_before = snapshot_from_report(await pair.pc1.getStats())
    assert before is not None and out_before is not None and before.packets_received > 0
    pair.s1.set_conditions(NetworkConditions(loss=0.2, seed=7))
    await asyncio.sleep(4.0)  # ~200 audio packets
    after, _ = snapshot_from_report(await pair.pc2.getStats())
    assert after is not None
    received = after.packets_received - before.packets_received
    lost = after.packets_lost - before.packets_lost
    assert received > 100
    assert 0.1 < lost / (received + lost) < 0.3  # 200 packets: sd ~2.8 %
    _, out = snapshot_from_report(await pair.pc1.getStats())
    assert out is not None
    assert 0.68 < received / (out.packets_sent - out_before.packets_sent) < 0.92


async def test_delay_shows_as_rtt(pairs) -> None:
    cond = NetworkConditions(delay_ms=200)
    pair = pairs(cond, cond)
    await pair.negotiate()
    assert await pair.wait_connected(10.0)
    rtt = None
    deadline = time.monotonic() + 10.0
    while rtt is None and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        report = await pair.pc1.getStats()
        remote = [s for s in report.values() if s.type == "remote-inbound-rtp"]
        if remote and remote[0].roundTripTime is not None:
            rtt = remote[0].roundTripTime  # seconds in aiortc
    assert rtt is not None
    assert 0.38 < rtt < 0.5


def test_icehooks_install_is_idempotent() -> None:
    import aioice.ice

    before = (
        aioice.ice.get_host_addresses,
        aioice.ice.Connection.gather_candidates,
        aioice.ice.StunProtocol.connection_made,
    )
    icehooks.install()
    icehooks.install()
    after = (
        aioice.ice.get_host_addresses,
        aioice.ice.Connection.gather_candidates,
        aioice.ice.StunProtocol.connection_made,
    )
    assert before == after


async def test_attach_without_transports_is_harmless() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        icehooks.attach(pc, host_addresses=["127.0.0.1"], shaper=NetworkShaper())
        assert icehooks.connections(pc) == [] and icehooks.selected_pairs(pc) == []
        pc.createDataChannel("x")
        icehooks.attach(pc, host_addresses=["127.0.0.1"])
        assert len(icehooks.connections(pc)) == 1
    finally:
        await pc.close()


def test_counts_snapshot_difference_and_realized_loss() -> None:
    from callkit.media import NetworkCounts

    a = NetworkCounts(sent=100, dropped=5, overflowed=1, delayed=10)
    b = NetworkCounts(sent=190, dropped=15, overflowed=1, delayed=30)
    d = b - a
    assert d == NetworkCounts(sent=90, dropped=10, overflowed=0, delayed=20)
    assert d.loss == 0.1
    assert NetworkCounts().loss == 0.0
