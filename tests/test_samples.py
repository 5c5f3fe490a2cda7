"""The samples as people run them: the softphone and a CLI bot as real processes."""

from __future__ import annotations

import ast
import asyncio
import itertools
import os
import re
import sys
from pathlib import Path

import pytest

import callkit
import callkit.media
import callkit.signaling
import callkit.testing
from callkit import CallMediaType
from callkit.samples.tone_bot import ToneBot

from .conftest import SDK_APP_ID, SECRET

pytestmark = pytest.mark.loopback

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "callkit" / "samples").glob("*.py"))


class Process:
    """A child process with line-by-line stdout that fails loudly when a wait times out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> Process:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Read lines until one matches ``pattern``; returns the match."""
        regex = re.compile(pattern)
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(0.01, left))
            except asyncio.TimeoutError:
                raw = None
            if not raw:
                tail = "\n".join(self.lines[-60:])
                raise AssertionError(
                    f"waited {timeout} s for /{pattern}/ in the output; last lines:\n{tail}"
                )
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            m = regex.search(line)
            if m:
                return m

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def finish(self, timeout: float = 15.0) -> int:
        try:
            rest, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except asyncio.TimeoutError as exc:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                "the process did not exit; output:\n" + "\n".join(self.lines)
            ) from exc
        self.lines += rest.decode().splitlines()
        return self.proc.returncode or 0


def meter(line: str) -> dict[str, int]:
    """``alice(me) ########--  80 GOOD | tone ...`` -> {"alice": 80, "tone": ...}."""
    return {m[1]: int(m[2]) for m in re.finditer(r"(\w+)(?:\(me\))? [#-]{10} +(\d+)", line)}


async def test_softphone_calls_a_tone_bot_and_shows_volumes(make_engine, server) -> None:
    """`callkit phone` in a child process, driven through stdin, calls a tone bot (-30 dBFS,
    volume 60) embedded here; its meters show the bot at ~60 and itself at ~80 (its own
    -20 dBFS tone: no microphone is used with --tone), 0 after mute."""
    bot_engine, rb = await make_engine("tone")
    ToneBot(bot_engine, freq=660, level_dbfs=-30)
    phone = await Process.start(
        "-m",
        "callkit.cli",
        "phone",
        "--url",
        server.url,
        "--user",
        "alice",
        "--secret-key",
        SECRET,
        "--sdk-app-id",
        str(SDK_APP_ID),
        "--ice-address",
        "127.0.0.1",
        "--tone",
        "--no-speaker",
        "--pattern",
        "--meters",
        "0.5",
    )
    try:
        await phone.expect(r"^logged in as alice")
        phone.send("call tone")
        await phone.expect(r"^>> calling tone \(audio\)")
        await phone.expect(r"^== audio call connected")
        volumes: list[dict[str, int]] = []
        for _ in range(20):  # 10 s at most: until 3 steady lines
            m = await phone.expect(r"^   alice\(me\) .*\| tone ")
            volumes.append(meter(m.string))
            if len(volumes) >= 3 and all(abs(v["tone"] - 60) <= 4 for v in volumes[-3:]):
                break
        assert all(abs(v["tone"] - 60) <= 4 and abs(v["alice"] - 80) <= 4 for v in volumes[-3:]), (
            volumes
        )
        await rb.wait_for(
            "onUserVoiceVolumeChanged", lambda p: abs(p["volumeMap"].get("alice", 0) - 80) <= 4
        )
        phone.send("mute")
        await phone.expect(r"^>> microphone off")
        await phone.expect(r"^   alice\(me\) -{10}   0 ", timeout=5)
        await rb.wait_for(
            "onUserAudioAvailable", lambda p: p == {"userId": "alice", "isAudioAvailable": False}
        )
        phone.send("camera on")  # an audio call: refused, not fatal
        await phone.expect(r"^!! camera: .*\(code -1205\)")
        phone.send("hangup")
        await phone.expect(r"^== call ended after \d+ s")
        await rb.wait_for("onCallEnd")
        phone.send("quit")
        assert await phone.finish() == 0
        assert phone.lines[-1] == "bye"
    finally:
        if phone.proc.returncode is None:
            phone.proc.kill()
            await phone.proc.wait()


async def test_cli_echo_bot_process_echoes_a_caller(make_engine, server) -> None:
    bot = await Process.start(
        "-m",
        "callkit.cli",
        "bot",
        "echo",
        "--url",
        server.url,
        "--secret-key",
        SECRET,
        "--ice-address",
        "127.0.0.1",
    )
    try:
        await bot.expect(r"^echo bot 'echo' online")
        alice, ra = await make_engine("alice", audio_source=callkit.media.ToneSource(440, -20))
        await alice.call("echo", CallMediaType.AUDIO)
        await ra.wait_for("onCallBegin")
        heard = await ra.wait_for(
            "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("echo", 0) >= 76, timeout=10
        )
        assert heard["volumeMap"]["echo"] <= 84
        await alice.hangup()
        await bot.expect(r"^call ended")
    finally:
        bot.proc.terminate()  # SIGTERM: the bot logs out and exits
        assert await bot.finish() == 0


def test_samples_run_as_plain_files() -> None:
    import subprocess

    for name in ("softphone", "echo_bot", "record_bot", "tone_bot"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "callkit" / "samples" / f"{name}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        )
        assert proc.returncode == 0 and "--secret-key" in proc.stdout, (name, proc.stderr)


def test_samples_use_only_the_public_api() -> None:
    """Samples import from callkit, media and signaling only names in their ``__all__``
    (plus the standard library and each other)."""
    public = {
        "callkit": set(callkit.__all__),
        "callkit.media": set(callkit.media.__all__),
        "callkit.signaling": set(callkit.signaling.__all__),
        "callkit.testing": set(callkit.testing.__all__),
    }
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in SAMPLES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                top = module if module in public else module.split(".")[0]
                if module.startswith("callkit.samples"):
                    continue  # samples may import each other
                if top in public:
                    assert node.module == top, f"{path.name}: imports {node.module}"
                    names = {a.name for a in node.names}
                    assert names <= public[top], f"{path.name}: {names - public[top]}"
                else:
                    allowed = stdlib | ({"pytest"} if path.name.startswith("test_") else set())
                    assert top in allowed, f"{path.name}: imports {node.module}"
            elif isinstance(node, ast.Import):
                allowed = stdlib | ({"pytest"} if path.name.startswith("test_") else set())
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{path.name}: {alias.name}"
        assert ast.get_docstring(tree), f"{path.name} has no usage docstring"


async def test_readme_bot_example_runs(make_engine, server, tmp_path: Path) -> None:
    """The ten-line bot of samples/README.md, as printed there (URL and key swapped in)."""
    readme = (ROOT / "callkit" / "samples" / "README.md").read_text()
    code = readme.split("A bot that answers, beeps")[1].split("```python\n")[1].split("```")[0]
    code = code.replace("ws://127.0.0.1:8765/ws", server.url).replace('"KEY"', repr(SECRET))
    code = code.replace("audio_source=voice)", 'audio_source=voice, ice_addresses=["127.0.0.1"])')
    (tmp_path / "bot.py").write_text(code)
    bot = await Process.start(str(tmp_path / "bot.py"))
    try:
        await bot.expect(r"^bot online")
        alice, ra = await make_engine("alice", audio_source=callkit.media.ToneSource(440, -20))
        await alice.call("bot", CallMediaType.AUDIO)
        await ra.wait_for("onCallBegin")
        await bot.expect(r"^caller is talking$")  # alice's tone, pulled as numpy
        await ra.wait_for(
            "onUserVoiceVolumeChanged",  # the beep, pushed as numpy
            lambda p: p["volumeMap"].get("bot", 0) > 50,
        )
    finally:
        bot.proc.kill()
        await bot.proc.wait()


async def test_tone_bot_plays_a_media_file_into_a_video_call(make_engine, tmp_path: Path) -> None:
    """The tone bot with --file: the file's audio (-20 dBFS tone) and video (a counting
    test pattern) reach the caller, looping, from the start of each call."""
    from .test_files import write_video

    clip = tmp_path / "clip.mkv"
    write_video(clip, frames=20, fps=10, with_audio=True)
    bot_engine, _ = await make_engine("tone")
    bot = ToneBot(bot_engine, file=str(clip), loop=True)
    alice, ra = await make_engine(
        "alice", video_source=callkit.media.TestPatternSource(160, 120, 15)
    )
    video = alice.remote_video("tone", format="gray")
    await alice.call("tone", CallMediaType.VIDEO)
    await ra.wait_for("onCallBegin")
    counters: list[int] = []
    async for image in video:
        assert image.shape == (120, 160)
        counters.append(callkit.media.TestPatternSource.decode_counter(image))
        if len(counters) == 30:  # 3 s at 10 fps: the 2 s clip loops
            break
    await video.aclose()
    assert set(counters) <= set(range(20)) and max(counters) >= 15
    assert any(b < a for a, b in itertools.pairwise(counters)), counters  # looped
    maps = [p["volumeMap"]["tone"] for p in ra.of("onUserVoiceVolumeChanged")][-4:]
    assert all(abs(v - 80) <= 4 for v in maps), maps
    assert bot.playing is not None and bot.playing.audio is not None
    await alice.hangup()
    await ra.wait_for("onCallEnd")
    for _ in range(50):
        if bot.playing is None:
            break
        await asyncio.sleep(0.02)
    assert bot.playing is None  # closed at the end of the call
