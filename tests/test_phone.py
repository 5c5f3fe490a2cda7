"""The terminal phone: status line (in place on a terminal), ringing shown, unknown commands
answered, an audio file sent with --file."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import wave
from pathlib import Path

import pytest

from callkit import CallError
from callkit.samples import softphone
from callkit.samples.softphone import Softphone, StatusLine
from callkit.testing import EngineFactory, EventRecorder, wait_hears


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_on_a_terminal_is_drawn_in_place() -> None:
    out = Terminal()
    status = StatusLine(out)
    status.show("alice(me) ########--  80 EXCELLENT")
    status.show("alice(me) #######---  70 GOOD")
    status.close()
    text = out.getvalue()
    assert "\n" not in text  # never a new line into what the user types
    assert text.count("\0337") == text.count("\0338")  # the cursor always goes back
    assert "\033[1;1H\033[2K" in text and "70 GOOD" in text
    assert text.endswith("\0337\033[r\0338")  # the whole terminal scrolls again after


def test_status_line_elsewhere_is_printed_as_lines() -> None:
    out = io.StringIO()
    StatusLine(out).show("ringing: calling bob (3 s)")
    assert out.getvalue() == "ringing: calling bob (3 s)\n"


def _write_tone_wav(path: Path, seconds: float = 3.0, level_dbfs: float = -20.0) -> None:
    rate = 48000
    amp = 32768 * 10 ** (level_dbfs / 20) * math.sqrt(2)  # sine RMS at level_dbfs
    samples = (
        int(amp * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))


async def test_phone_rings_answers_unknown_commands_and_sends_a_file(
    callkit_engine: EngineFactory, tmp_path: Path
) -> None:
    wav = tmp_path / "tone.wav"
    _write_tone_wav(wav)
    args = softphone.build_parser().parse_args(
        ["--secret-key", "k", "--file", str(wav), "--no-speaker", "--pattern"]
    )
    audio, speaker = softphone.open_audio(args, print)
    assert speaker is None
    alice = await callkit_engine("alice", audio_source=audio)
    bob = await callkit_engine("bob")
    rb = EventRecorder(bob)
    out = io.StringIO()
    phone = Softphone(alice, out=out, camera=None, meter_interval=0.3)
    try:
        assert await phone.command("dance") is True
        assert "?? unknown command 'dance': type help" in out.getvalue()
        await phone.command("call")
        assert "?? usage: call USER [video]" in out.getvalue()
        await phone.command("help")
        assert "place a 1v1 call" in out.getvalue()

        meters = asyncio.create_task(phone._meters())
        await phone.command("call bob")
        await rb.wait_for("onCallReceived")
        await asyncio.sleep(0.8)
        assert "ringing: calling bob (" in out.getvalue()  # shown while it rings
        await bob.accept()
        await rb.wait_for("onCallBegin")
        # the file's -20 dBFS tone reaches bob
        await wait_hears(bob, "alice", level_dbfs=-20, timeout=15)
        await asyncio.sleep(0.7)
        assert "alice(me) " in out.getvalue().splitlines()[-1]
        meters.cancel()
    finally:
        audio.close()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    args = softphone.build_parser().parse_args(
        ["--secret-key", "k", "--file", str(tmp_path / "nope.wav")]
    )
    with pytest.raises(CallError) as err:
        softphone.open_audio(args, print)
    assert err.value.code == -1202 and "cannot send" in err.value.message
