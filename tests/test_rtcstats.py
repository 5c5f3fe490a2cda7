"""Tests for media.rtcstats: unit conversion on hand-made reports and a real loopback."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import AudioStreamTrack
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCStatsReport,
    RTCTransportStats,
)

from callkit.media import icehooks
from callkit.media.rtcstats import (
    InboundSnapshot,
    OutboundSnapshot,
    RtcpLog,
    install_rtcp_hooks,
    rtcp_log,
    snapshot_from_report,
)

NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def inbound(kind: str, recv: int, lost: int, jitter: int, n: int = 0) -> RTCInboundRtpStreamStats:
    return RTCInboundRtpStreamStats(
        timestamp=NOW,
        type="inbound-rtp",
        id=f"inbound-rtp_{kind}{n}",
        ssrc=1000 + n,
        kind=kind,
        transportId="t",
        packetsReceived=recv,
        packetsLost=lost,
        jitter=jitter,
    )


def outbound(kind: str, sent: int, n: int = 0) -> RTCOutboundRtpStreamStats:
    return RTCOutboundRtpStreamStats(
        timestamp=NOW,
        type="outbound-rtp",
        id=f"outbound-rtp_{kind}{n}",
        ssrc=2000 + n,
        kind=kind,
        transportId="t",
        packetsSent=sent,
        bytesSent=sent * 100,
        trackId="x",
    )


def remote(kind: str, lost: int, jitter: int, rtt: float | None, frac: int, n: int = 0):
    return RTCRemoteInboundRtpStreamStats(
        timestamp=NOW,
        type="remote-inbound-rtp",
        id=f"remote-inbound-rtp_{kind}{n}",
        ssrc=3000 + n,
        kind=kind,
        transportId="t",
        packetsReceived=0,
        packetsLost=lost,
        jitter=jitter,
        roundTripTime=rtt,
        fractionLost=frac,  # type: ignore[arg-type]
    )


def report(*stats) -> RTCStatsReport:
    r = RTCStatsReport()
    for s in stats:
        r.add(s)
    r.add(
        RTCTransportStats(
            timestamp=NOW,
            type="transport",
            id="t",
            packetsSent=1,
            packetsReceived=1,
            bytesSent=1,
            bytesReceived=1,
            iceRole="controlling",
            dtlsState="connected",
        )
    )
    return r


def test_empty_report() -> None:
    assert snapshot_from_report(RTCStatsReport()) == (None, None)
    assert snapshot_from_report(report()) == (None, None)


def test_audio_units_converted() -> None:
    r = report(
        inbound("audio", 500, 5, 480), outbound("audio", 700), remote("audio", 7, 960, 0.125, 64)
    )
    inb, out = snapshot_from_report(r, "audio")
    assert inb == InboundSnapshot(packets_received=500, packets_lost=5, jitter_ms=10.0)
    assert out == OutboundSnapshot(
        packets_sent=700,
        rtt_ms=125.0,
        remote_fraction_lost=64,
        remote_jitter_ms=20.0,
        remote_packets_lost=7,
    )


def test_video_units_and_kind_filter() -> None:
    r = report(
        inbound("audio", 500, 5, 480),
        inbound("video", 900, 0, 900, 1),
        outbound("audio", 700),
        outbound("video", 1000, 1),
        remote("video", 0, 4500, 0.05, 0, 1),
    )
    vin, vout = snapshot_from_report(r, "video")
    assert vin is not None and vin.jitter_ms == pytest.approx(10.0)  # 900 / 90 kHz
    assert vin.packets_received == 900
    assert vout is not None and vout.packets_sent == 1000
    assert vout.remote_jitter_ms == pytest.approx(50.0) and vout.rtt_ms == pytest.approx(50.0)
    ain, aout = snapshot_from_report(r, "audio")
    assert ain is not None and ain.packets_received == 500
    assert aout is not None and aout.rtt_ms is None and aout.remote_fraction_lost is None


def test_several_streams_sum_counts_and_take_worst() -> None:
    r = report(
        inbound("audio", 100, 1, 48),
        inbound("video", 300, 4, 1800, 1),
        outbound("audio", 110),
        outbound("video", 320, 1),
        remote("audio", 2, 96, 0.02, 10),
        remote("video", 3, 900, 0.03, 40, 1),
    )
    inb, out = snapshot_from_report(r, None)
    assert inb == InboundSnapshot(packets_received=400, packets_lost=5, jitter_ms=20.0, streams=2)
    assert out is not None
    assert out.packets_sent == 430 and out.streams == 2
    assert out.rtt_ms == pytest.approx(30.0)
    assert out.remote_fraction_lost == 40
    assert out.remote_jitter_ms == pytest.approx(10.0)  # max(96/48k, 900/90k) = 10 ms
    assert out.remote_packets_lost == 5


def test_clock_rate_override() -> None:
    r = report(inbound("audio", 10, 0, 80))
    inb, _ = snapshot_from_report(r, "audio", clock_rates={"audio": 8000})
    assert inb is not None and inb.jitter_ms == pytest.approx(10.0)


def test_remote_rtt_none_until_measured() -> None:
    r = report(outbound("audio", 50), remote("audio", 0, 0, None, 0))
    _, out = snapshot_from_report(r)
    assert out is not None and out.rtt_ms is None and out.remote_fraction_lost == 0


async def test_real_loopback_values_plausible() -> None:
    pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    hole = MediaBlackhole()
    pc1.on("track", hole.addTrack)
    pc2.on("track", hole.addTrack)
    try:
        pc1.addTrack(AudioStreamTrack())
        icehooks.attach(pc1, host_addresses=["127.0.0.1"])
        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        pc2.addTrack(AudioStreamTrack())  # audio both ways
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        await hole.start()

        deadline = time.monotonic() + 12.0
        snaps: list = []
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            snaps = [snapshot_from_report(await pc.getStats()) for pc in (pc1, pc2)]
            if all(
                inb and out and out.rtt_ms is not None and inb.packets_received > 100
                for inb, out in snaps
            ):
                break
        assert pc1.connectionState == "connected"
        for local, remote_addr in icehooks.selected_pairs(pc1):
            assert local[0] == remote_addr[0] == "127.0.0.1"
        for inb, out in snaps:
            assert inb is not None and out is not None
            assert inb.packets_received > 100 and inb.packets_lost == 0
            assert 0.0 <= inb.jitter_ms < 20.0
            assert out.rtt_ms is not None and 0.0 <= out.rtt_ms < 100.0
            assert out.remote_fraction_lost == 0
            assert out.remote_jitter_ms is not None and out.remote_jitter_ms < 20.0
        # what one side sent is what the other received (stats are read a moment apart)
        (in1, out1), (in2, out2) = snaps
        assert abs(out1.packets_sent - in2.packets_received) < 50
        assert abs(out2.packets_sent - in1.packets_received) < 50
    finally:
        await hole.stop()
        await pc1.close()
        await pc2.close()


# --------------------------------------------------------------------------- RTCP log / hooks


class Block:
    """A stand-in for aiortc's RtcpReceiverInfo."""

    def __init__(
        self, seq: int, lost: int = 0, lsr: int = 0, dlsr: int = 0, jitter: int = 0, frac: int = 0
    ) -> None:
        self.ssrc = 1
        self.highest_sequence = seq
        self.packets_lost = lost
        self.lsr = lsr
        self.dlsr = dlsr
        self.jitter = jitter
        self.fraction_lost = frac


def test_rtcp_log_unwraps_sequence_numbers() -> None:
    log = RtcpLog()
    assert [
        log.block_received(Block(s), float(i)).highest_seq
        for i, s in enumerate([65500, 65535, 10, 200, 150, 70000 & 0xFFFF])
    ] == [65500, 65535, 65546, 65736, 65686, 70000]


def test_rtcp_log_rtt_from_any_recent_sr() -> None:
    log = RtcpLog()
    log.sr_sent(lsr=0x1000, packet_count=50, at=10.0)
    log.sr_sent(lsr=0x2000, packet_count=100, at=11.0)
    assert log.packets_sent == 100 and log.srs_sent == 2
    # a report echoing the OLDER SR still gives a sample (aiortc only uses the latest SR)
    b = log.block_received(Block(5, lsr=0x1000, dlsr=int(0.25 * 65536)), at=11.05)
    assert b.rtt_ms == pytest.approx(800.0, abs=0.1)
    b = log.block_received(Block(6, lsr=0x2000, dlsr=int(0.1 * 65536)), at=11.9)
    assert b.rtt_ms == pytest.approx(800.0, abs=0.1)
    assert log.rtt_ms == pytest.approx(800.0, abs=0.1)
    assert log.block_received(Block(7, lsr=0), at=12.0).rtt_ms is None  # no SR received yet
    assert log.block_received(Block(8, lsr=0x9999), at=12.0).rtt_ms is None  # unknown SR
    assert log.rtt_ms == pytest.approx(800.0, abs=0.1)  # the latest sample stays


def test_rtcp_log_take_blocks_returns_each_block_once() -> None:
    log = RtcpLog()
    assert log.take_blocks() == []
    log.block_received(Block(1, lost=2, jitter=480, frac=64), 1.0)
    log.block_received(Block(2), 2.0)
    taken = log.take_blocks()
    assert [b.highest_seq for b in taken] == [1, 2]
    assert (taken[0].packets_lost, taken[0].jitter, taken[0].fraction_lost) == (2, 480, 64)
    assert log.take_blocks() == []
    log.block_received(Block(3), 3.0)
    assert [b.highest_seq for b in log.take_blocks()] == [3]


def test_rtcp_hooks_install_once() -> None:
    from aiortc.rtcrtpsender import RTCRtpSender

    before = (RTCRtpSender._send_rtcp, RTCRtpSender._handle_rtcp_packet)
    install_rtcp_hooks()
    install_rtcp_hooks()
    assert (RTCRtpSender._send_rtcp, RTCRtpSender._handle_rtcp_packet) == before


async def test_rtcp_log_on_a_real_delayed_link() -> None:
    """200 ms each way: RTT samples ~400 ms from nearly every report, unlike aiortc's."""
    from aiortc import RTCRtpSender  # noqa: F401  (the hooks patch its class)

    from callkit.media.netsim import NetworkConditions, NetworkShaper

    cond = NetworkConditions(delay_ms=200)
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    hole = MediaBlackhole()
    for pc in pcs:
        pc.on("track", hole.addTrack)
    try:
        pcs[0].addTrack(AudioStreamTrack())
        icehooks.attach(pcs[0], host_addresses=["127.0.0.1"], shaper=NetworkShaper(cond))
        await pcs[0].setLocalDescription(await pcs[0].createOffer())
        await pcs[1].setRemoteDescription(pcs[0].localDescription)
        pcs[1].addTrack(AudioStreamTrack())
        icehooks.attach(pcs[1], host_addresses=["127.0.0.1"], shaper=NetworkShaper(cond))
        await pcs[1].setLocalDescription(await pcs[1].createAnswer())
        await pcs[0].setRemoteDescription(pcs[1].localDescription)
        await hole.start()
        sender = pcs[0].getSenders()[0]
        log = rtcp_log(sender)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            if sum(b.rtt_ms is not None for b in log.blocks) >= 4:
                break
        samples = [b.rtt_ms for b in log.blocks if b.rtt_ms is not None]
        assert len(samples) >= 4, list(log.blocks)
        assert all(380 < s < 520 for s in samples), samples
        seqs = [b.highest_seq for b in log.blocks]
        assert seqs == sorted(seqs) and seqs[-1] > seqs[0]
        assert all(b.packets_lost == 0 and b.fraction_lost == 0 for b in log.blocks)
        assert log.packets_sent > 0
    finally:
        await hole.stop()
        for pc in pcs:
            await pc.close()
