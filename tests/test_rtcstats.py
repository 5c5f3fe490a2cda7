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

from media import icehooks
from media.rtcstats import InboundSnapshot, OutboundSnapshot, snapshot_from_report

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
