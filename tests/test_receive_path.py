"""Attacks on the receive path (issue 14): what a hostile host can throw at an ICE socket.

aioice accepts datagrams from any address on a connection's sockets, so anyone who learns a
candidate address can send bytes there. Callkit's sessions take SRTP straight from the socket
(:func:`callkit.media._compat.deliver_srtp_directly`); these tests check that bogus bytes are
dropped cheaply, never kill the call, never pile up, and never starve another call that shares
the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from callkit.media import _compat, icehooks

from .helpers import connect


async def _session(engine: Any, other: str) -> Any:
    """``engine``'s session with ``other`` once its audio is flowing (10 frames decoded)."""
    deadline = time.monotonic() + 10
    while other not in engine.peers or engine.peers[other].audio_receiver is None:
        assert time.monotonic() < deadline, f"no audio session to {other} within 10 s"
        await asyncio.sleep(0.05)
    session = engine.peers[other]
    while session.audio_receiver.decoded < 10 or not icehooks.selected_pairs(session.pc):
        assert time.monotonic() < deadline, f"no audio from {other} within 10 s"
        await asyncio.sleep(0.05)
    return session


def _direct(session: Any) -> Any:
    (dtls,) = icehooks.dtls_transports(session.pc)
    direct = _compat.delivers_srtp_directly(dtls)
    assert direct is not None, "callkit's session does not take SRTP directly"
    return dtls, direct


async def _decoded_during(sessions: list[Any], seconds: float) -> list[int]:
    before = [s.audio_receiver.decoded for s in sessions]
    await asyncio.sleep(seconds)
    return [s.audio_receiver.decoded - b for s, b in zip(sessions, before, strict=True)]


@pytest.mark.loopback
async def test_bogus_datagrams_are_dropped_and_the_call_goes_on(make_engine) -> None:
    """An empty datagram (aiortc's own reader dies on it: the call's media stops for good),
    forged SRTP and SRTCP, and junk that is neither STUN nor SRTP: the transport stays
    connected, the forgeries never reach the receiver, the junk never piles up on aioice's
    queue, and the audio keeps coming."""
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    session = await _session(bob, "alice")
    dtls, direct = _direct(session)
    ((local, _),) = icehooks.selected_pairs(session.pc)
    receiver = session.audio_receiver
    jitter_before, handled_before = receiver.jitter.received, direct.handled
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"", local)
        for i in range(300):
            rtp = bytes([0x80, 111]) + i.to_bytes(2, "big") + os.urandom(8) + os.urandom(100)
            rtcp = bytes([0x80, 200]) + os.urandom(40)
            junk = bytes([0x17, 0xFE, 0xFD]) + os.urandom(60)  # a DTLS record header
            for data in (rtp, rtcp, junk, bytes([0x40]) + os.urandom(30)):
                sock.sendto(data, local)
            if i % 10 == 0:
                await asyncio.sleep(0.002)  # paced: the kernel's socket buffer keeps them
    finally:
        sock.close()
    got = await _decoded_during([session], 1.0)
    assert got[0] >= 40, f"audio stopped after the bogus datagrams: {got[0]} frames in 1 s"
    assert dtls.state == "connected"
    # the forgeries went the direct way, and none passed SRTP authentication: only alice's
    # real packets (50 a second) reached the receiver
    assert direct.handled - handled_before >= 500, direct.handled - handled_before
    real = (time.monotonic() - start) * 50
    assert receiver.jitter.received - jitter_before <= real + 10, (
        receiver.jitter.received - jitter_before,
        real,
    )
    assert direct.dropped >= 1  # the empty one
    assert direct.errors == 0
    conn = _compat.ice_connection(dtls.transport)
    assert conn is not None and conn._queue.qsize() <= _compat.MAX_QUEUED
    await alice.hangup()


_FLOOD = """
import os, socket, sys, time
host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = [bytes([0x80, 111]) + os.urandom(170) for _ in range(64)]
sent, start = 0, time.monotonic()
while (now := time.monotonic()) - start < seconds:
    if sent < (now - start) * rate:
        for p in payload[:16]:
            sock.sendto(p, (host, port))
        sent += 16
    else:
        time.sleep(0.001)
print(sent)
"""


@pytest.mark.loopback
async def test_an_srtp_flood_on_one_call_does_not_starve_another(make_engine) -> None:
    """Another process floods one call's ICE socket with forged SRTP (4,000 datagrams a
    second, 80 times its real audio rate, for 3 s). The other call on the same event loop
    keeps (nearly) all its frames, and so does the flooded one."""
    engines = [await make_engine(name) for name in ("a1", "b1", "a2", "b2")]
    (a1, ra1), (b1, rb1), (a2, ra2), (b2, rb2) = engines
    await connect(a1, ra1, b1, rb1)
    await connect(a2, ra2, b2, rb2)
    flooded, other = await _session(b1, "a1"), await _session(b2, "a2")
    _, direct = _direct(flooded)
    ((local, _),) = icehooks.selected_pairs(flooded.pc)
    await _decoded_during([flooded, other], 0.5)  # settled
    seconds = 3.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FLOOD,
        local[0],
        str(local[1]),
        str(seconds),
        "4000",
        stdout=subprocess.PIPE,
    )
    try:
        await asyncio.sleep(0.3)  # the flood is on
        handled = direct.handled
        got = await _decoded_during([flooded, other], 2.0)
        flood_seen = direct.handled - handled
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert int(out) >= 4000, f"the flood did not run: {out!r}"
    assert flood_seen >= 3000, f"the flood hardly reached the socket: {flood_seen} in 2 s"
    # 100 frames each in 2 s; a generous bound for a loaded 2-core machine
    assert got[1] >= 85, f"the other call starved during the flood: {got[1]}/100 frames"
    assert got[0] >= 85, f"the flooded call lost its audio: {got[0]}/100 frames"
    assert direct.errors == 0
    await a1.hangup()
    await a2.hangup()


class _Transport:
    state = "connected"


class _Recorder:
    """Stands for callkit's AudioReceiver in a receiver's jitter-buffer slot."""

    def __init__(self) -> None:
        self.packets: list[Any] = []

    def add(self, packet: Any) -> tuple[bool, None]:
        self.packets.append(packet)
        return False, None


def _lean_receiver() -> tuple[Any, Any, _Recorder]:
    receiver = RTCRtpReceiver("audio", _Transport())  # type: ignore[arg-type]
    codecs = _compat.receiver_codecs(receiver)
    assert codecs == {}
    receiver._RTCRtpReceiver__codecs.update(
        {
            111: RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111),
            0: RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0),
        }
    )
    recorder = _Recorder()
    _compat.use_jitter_buffer(receiver, recorder)
    return receiver, _compat.lean_audio_rtp(receiver), recorder


def _rtp(
    *, pt: int = 111, csrc: int = 0, ext_words: int = 0, pad: int = 0, payload: bytes = b"op"
) -> bytes:
    b0 = 0x80 | (0x10 if ext_words is not None and ext_words > 0 else 0) | csrc
    b0 |= 0x20 if pad else 0
    head = bytes([b0, 0x80 | pt]) + (4660).to_bytes(2, "big") + (99999).to_bytes(4, "big")
    head += (0xCAFEBABE).to_bytes(4, "big") + b"\x00\x00\x00\x07" * csrc
    if ext_words:
        head += b"\xbe\xde" + ext_words.to_bytes(2, "big") + b"\x10\x2a\x00\x00" * ext_words
    tail = (b"\x00" * (pad - 1) + bytes([pad])) if pad else b""
    return head + payload + tail


def test_lean_rtp_reads_headers_as_aiortc_does_and_leaves_the_rest_to_it() -> None:
    """Attack on the lean parser (what an authenticated but hostile peer could send): CSRCs,
    header extensions and padding give the payload aiortc's parser gives; a truncated
    extension, padding longer than the packet, another version or another codec are not
    taken (aiortc's path, which drops what it cannot parse); a disabled receiver's packets
    are dropped. Every packet taken is counted in aiortc's statistics."""
    receiver, lean, recorder = _lean_receiver()
    for data in (
        _rtp(),
        _rtp(csrc=3),
        _rtp(ext_words=2),
        _rtp(csrc=1, ext_words=1, pad=4),
        _rtp(payload=b""),
    ):
        assert lean(data) is True
        ours, theirs = recorder.packets[-1], RtpPacket.parse(data)
        assert (ours._data, ours.sequence_number, ours.timestamp, ours.ssrc, ours.marker) == (
            theirs.payload,
            theirs.sequence_number,
            theirs.timestamp,
            theirs.ssrc,
            theirs.marker,
        )
    taken = len(recorder.packets)
    header = bytes([0x90]) + _rtp()[1:12]  # with the extension bit
    for data in (
        header + b"\xbe\xde",  # truncated extension header
        header + b"\xbe\xde\xff\xff" + b"x" * 8,  # extension longer than the packet
        bytes([0xA0]) + _rtp()[1:-1] + b"\xff",  # padding longer than the packet
        bytes([0xA0]) + _rtp()[1:-1] + b"\x00",  # padding of length 0
        bytes([0x40]) + _rtp()[1:],  # version 1
        _rtp(pt=0),  # PCMU: aiortc's decoder path
        _rtp(pt=96),  # not a payload type of the receiver
    ):
        assert lean(data) is False, data
    assert len(recorder.packets) == taken
    receiver._enabled = False
    assert lean(_rtp()) is True and len(recorder.packets) == taken
    streams = receiver._RTCRtpReceiver__remote_streams
    assert streams[0xCAFEBABE].packets_received == taken
    assert [s.source for s in receiver.getSynchronizationSources()] == [0xCAFEBABE]


async def test_a_handler_that_suspends_is_finished_in_a_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The direct path steps aiortc's handler coroutines in place; one that really waits (a
    first TURN ChannelBind on the way of a retransmission) is finished by ``_finish`` as an
    ``await`` would: the value it waited for comes in, an exception after it is logged, not
    raised, and cancelling the task cancels what the handler waits for."""
    loop = asyncio.get_running_loop()
    got: list[Any] = []

    async def handler(fut: asyncio.Future[int], fail: bool) -> None:
        got.append(await fut)
        await asyncio.sleep(0)
        if fail:
            raise ValueError("boom")

    for fail in (False, True):
        fut: asyncio.Future[int] = loop.create_future()
        coro = handler(fut, fail)
        yielded = coro.send(None)  # as _DirectSrtp.srtp does
        assert yielded is fut
        task = loop.create_task(_compat._finish(coro, yielded))
        await asyncio.sleep(0)
        fut.set_result(7 + fail)
        await asyncio.wait_for(task, 1.0)
    assert got == [7, 8]
    assert "boom" in caplog.text
    fut = loop.create_future()
    coro = handler(fut, False)
    task = loop.create_task(_compat._finish(coro, coro.send(None)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()
