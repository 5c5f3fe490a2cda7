"""The main job (`callkit demo`) and the small CLI commands."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from callkit.cli import main
from callkit.demo import run_demo
from callkit.signaling.usersig import verify_user_sig


@pytest.mark.loopback
async def test_demo_runs_both_scenes() -> None:
    out = io.StringIO()
    result = await run_demo(talk_seconds=2.0, out=out)
    text = out.getvalue()
    assert result.ok, text
    assert [s.title.split(":")[0] for s in result.scenes] == ["1v1 video call", "group audio call"]
    group = result.scenes[1]
    assert group.volumes["carol"]["alice"] == pytest.approx(80, abs=6)
    assert group.volumes["alice"]["carol"] == pytest.approx(40, abs=6)
    assert result.scenes[0].video_frames["bob"] > 10
    assert "result: OK" in text


def test_usersig_command_prints_a_valid_sig(capsys) -> None:
    assert main(["usersig", "alice", "--sdk-app-id", "1400000001", "--secret-key", "k"]) == 0
    token = capsys.readouterr().out.strip()
    info = verify_user_sig(1400000001, "k", "alice", token)
    assert info.identifier == "alice"


def test_console_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "callkit.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("demo", "serve", "usersig"):
        assert command in proc.stdout


async def test_serve_command_runs_a_standalone_service() -> None:
    import asyncio
    import json

    import aiohttp

    from callkit.signaling.usersig import gen_user_sig

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callkit.cli",
        "serve",
        "--port",
        "0",
        "--secret-key",
        "k",
        "--sdk-app-id",
        "1400000009",
        "--db",
        "none",  # no records file in the working directory
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.split()[3]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/ws"), line
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "login",
                        "id": 1,
                        "sdkAppId": 1400000009,
                        "userId": "alice",
                        "userSig": gen_user_sig(1400000009, "k", "alice"),
                    }
                )
            )
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "ok" and reply["data"]["userId"] == "alice"
    finally:
        proc.terminate()
        await proc.wait()
