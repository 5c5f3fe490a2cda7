"""One INFO log line per login, logout, call start and call end; ``--log-format json``."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from callkit.logformat import JsonFormatter
from callkit.signaling import SignalingServer

from .test_server import login


async def test_info_lines_for_login_logout_and_call_lifecycle(
    server: SignalingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callkit.signaling.server")
    alice = await login(server.url or "", "alice")
    bob = await login(server.url or "", "bob")
    reply = await alice.request("call", callees=["bob"], mediaType=2)
    call_id = reply["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    await bob.request("accept", callId=call_id)
    await alice.event("onCallBegin")
    await alice.request("hangup", callId=call_id)
    await bob.event("onCallEnd")
    await alice.close()
    await bob.close()
    for _ in range(50):
        if sum("logout" in r.getMessage() for r in caplog.records) == 2:
            break
        await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum(line.startswith("login alice") for line in lines) == 1
    assert sum(line.startswith("login bob") for line in lines) == 1
    assert [line for line in lines if line.startswith(f"call {call_id} started")] == [
        f"call {call_id} started: alice -> bob (video, room {reply['data']['call']['roomID']})"
    ]
    ended = [line for line in lines if line.startswith(f"call {call_id} ended")]
    assert len(ended) == 1 and "NormalEnd" in ended[0]
    assert sum(line.startswith("logout alice") for line in lines) == 1
    assert sum(line.startswith("logout bob") for line in lines) == 1


def test_json_log_format() -> None:
    record = logging.LogRecord(
        "callkit.signaling.server", logging.INFO, "x", 1, "login %s", ("a",), None
    )
    out = json.loads(JsonFormatter().format(record))
    assert out["level"] == "INFO" and out["message"] == "login a"
    assert out["logger"] == "callkit.signaling.server" and isinstance(out["ts"], float)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]


async def test_serve_logs_json_lines() -> None:
    import sys

    from .conftest import SDK_APP_ID, SECRET
    from .test_server import RawClient

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callkit.cli", "-v", "serve", "--port", "0", "--db", "none",
        "--secret-key", SECRET, "--sdk-app-id", str(SDK_APP_ID), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()[3]
        client = await RawClient.connect(url)
        from .conftest import sig

        reply = await client.request(
            "login", sdkAppId=SDK_APP_ID, userId="alice", userSig=sig("alice")
        )
        assert reply["type"] == "ok"
        await client.close()
        found = None
        deadline = asyncio.get_running_loop().time() + 10
        while found is None and asyncio.get_running_loop().time() < deadline:
            line = await asyncio.wait_for(proc.stderr.readline(), 10)
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # e.g. a warning printed before logging was set up
            if obj["message"].startswith("login alice"):
                found = obj
        assert found is not None and found["level"] == "INFO"
    finally:
        proc.terminate()
        await proc.wait()
