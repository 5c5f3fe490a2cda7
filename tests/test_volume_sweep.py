"""Loopback: the receiver's volume follows the sender's tone level, and so does the RTP header.

The sender's ToneSource steps from -10 to -60 dBFS in 10 dB steps, then silence, mid-call.
The receiver's ``volumeMap`` entry for the sender must read 100, 80, 60, 40, 20, 0, 0
(within 4) after each step: the decoded Opus audio keeps the level. The ssrc-audio-level RTP
header extension of the packets the receiver gets must carry the level LocalAudio computed
(10, 20, ... 60 dBov, 127 for silence): aiortc's own per-frame loop is replaced
(media.volume.install_audio_level_hook) and would read our stereo frames 3 dB too loud.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import pytest
from aiortc.rtp import RtpPacket

from callkit import CallMediaType
from callkit.media import ToneSource, _compat

pytestmark = pytest.mark.loopback

STEPS = [
    (-10.0, 100, 10),
    (-20.0, 80, 20),
    (-30.0, 60, 30),
    (-40.0, 40, 40),
    (-50.0, 20, 50),
    (-60.0, 0, 60),
    (-math.inf, 0, 127),
]


async def test_volume_and_rtp_audio_level_follow_the_tone(make_engine, monkeypatch) -> None:
    tone = ToneSource(440, level_dbfs=-10)
    # volume every 0.15 s (default 0.3 s): each step settles and is measured sooner
    alice, ra = await make_engine("alice", audio_source=tone, volume_interval=0.15)
    bob, rb = await make_engine("bob", volume_interval=0.15)  # sends silence

    # record the audio-level header of every RTP packet bob's receivers get: callkit's audio
    # receivers take plain RTP on the lean path (_compat 13), which skips header extensions,
    # so the spy parses each packet with the receiver's negotiated extension map
    headers: list[tuple[float, object, object]] = []
    original = _compat._LeanAudioRtp.__call__

    def spy(self, data):
        extensions = self._receiver.transport._rtp_header_extensions_map
        level = RtpPacket.parse(data, extensions).extensions.audio_level
        headers.append((time.monotonic(), self._receiver, level))
        return original(self, data)

    monkeypatch.setattr(_compat._LeanAudioRtp, "__call__", spy)

    await alice.call("bob", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await rb.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("alice", 0) > 0, timeout=15
    )
    receivers = {t.receiver for t in bob.peers["alice"].pc.getTransceivers() if t.kind == "audio"}

    results = []
    for level, volume, dbov in STEPS:
        tone.level_dbfs = level
        await asyncio.sleep(0.6)  # pump queue + jitter buffer + one 150 ms window to flush
        since = time.monotonic()
        await asyncio.sleep(0.8)
        got = [
            e.payload["volumeMap"]
            for e in rb.events
            if e.event == "onUserVoiceVolumeChanged" and e.at >= since
        ]
        own = [
            e.payload["volumeMap"]
            for e in ra.events
            if e.event == "onUserVoiceVolumeChanged" and e.at >= since
        ]
        levels = [lv for t, rcv, lv in headers if t >= since and rcv in receivers]
        results.append(
            (
                level,
                volume,
                dbov,
                statistics.median(m["alice"] for m in got),
                statistics.median(m["alice"] for m in own),
                statistics.median(lv[1] for lv in levels) if levels else None,
                {lv[0] for lv in levels},
                len(levels),
            )
        )
    print("\n".join(str(r) for r in results))
    for level, volume, dbov, received, local, header, vad, packets in results:
        assert abs(received - volume) <= 4, (level, received)
        assert abs(local - volume) <= 1, (level, local)
        assert packets >= 20, (level, packets)  # ~50 packets/s, all with the header
        assert header == dbov, (level, header)  # carried exactly, stereo included
        assert vad == {False}
    await alice.hangup()
