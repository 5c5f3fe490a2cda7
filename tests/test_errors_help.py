"""Errors that say what to do: unreachable service (-1405), refused login, loud listeners."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap

import aiohttp
import pytest
from aiohttp import web

from callkit import CallEngine, CallError
from callkit.connect_errors import describe_connect_error
from callkit.signaling.usersig import gen_user_sig

from .conftest import SDK_APP_ID, sig


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def init_error(url: str, user_sig: str = "x") -> CallError:
    engine = CallEngine(url)
    try:
        with pytest.raises(CallError) as err:
            await asyncio.wait_for(engine.init(SDK_APP_ID, "alice", user_sig), 15)
    finally:
        await engine.destroy()
    return err.value


def assert_short_and_clean(message: str, url: str) -> None:
    assert message.startswith(f"cannot reach the signaling service at {url}: "), message
    assert len(message) < 300, message
    for noise in ("ConnectionKey", "CIMultiDict", "Traceback", "headers"):
        assert noise not in message, message


async def test_server_down_names_url_cause_and_what_to_check() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    err = await init_error(url)
    assert err.code == -1405
    assert_short_and_clean(err.message, url)
    assert "connection refused" in err.message and "callkit serve" in err.message


async def test_missing_ws_path_says_404_and_the_path(server) -> None:
    url = server.url.replace("/ws", "/wrong")
    err = await init_error(url)
    assert err.code == -1405
    assert_short_and_clean(err.message, url)
    assert "HTTP 404" in err.message and "/wrong" in err.message and "/ws" in err.message


async def test_http_server_that_is_not_callkit_and_tls_mismatch() -> None:
    app = web.Application()
    app.router.add_get("/ws", lambda request: web.Response(text="hello"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        err = await init_error(url)
        assert err.code == -1405
        assert_short_and_clean(err.message, url)
        assert "did not speak the WebSocket protocol" in err.message
        url = f"wss://127.0.0.1:{port}/ws"
        err = await init_error(url)
        assert err.code == -1405
        assert_short_and_clean(err.message, url)
        assert "TLS" in err.message and "ws://" in err.message
    finally:
        await runner.cleanup()


async def test_bad_urls() -> None:
    for url, words in (("foo://x/ws", "scheme must be ws://"), ("notaurl", "not a valid URL")):
        err = await init_error(url)
        assert err.code == -1405, (url, err)
        assert words in err.message, err.message


def test_descriptions_of_failures_not_made_on_this_machine() -> None:
    """DNS failures and timeouts (pure: exceptions built as aiohttp raises them)."""
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("no-such-host.invalid", 80, False, True, None, None, None)
    dns = aiohttp.ClientConnectorError(key, socket.gaierror(-2, "Name or service not known"))
    msg = describe_connect_error("ws://no-such-host.invalid/ws", dns)
    assert "host name 'no-such-host.invalid' was not found (DNS)" in msg
    msg = describe_connect_error("ws://10.1.2.3:8765/ws", asyncio.TimeoutError())
    assert "no answer from 10.1.2.3:8765 in time" in msg
    busy = aiohttp.WSServerHandshakeError(None, (), status=503, message="x")  # type: ignore[arg-type]
    assert "HTTP 503" in describe_connect_error("ws://h:1/ws", busy)
    odd = RuntimeError("x" * 1000)
    assert len(describe_connect_error("ws://h:1/ws", odd)) < 300


async def test_refused_login_hints_at_the_secret_key(server) -> None:
    wrong_key = gen_user_sig(SDK_APP_ID, "some-other-secret", "alice", 3600)
    err = await init_error(server.url, wrong_key)
    assert err.code == -1201
    assert "bad signature" in err.message and "secret key" in err.message
    err = await init_error(server.url, sig("bob"))
    assert err.code == -1201 and "another user id" in err.message
    err = await init_error(server.url, "garbage")
    assert err.code == -1201 and "callkit usersig" in err.message


SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from callkit import CallEngine
    from callkit.signaling import SignalingServer
    from callkit.signaling.usersig import gen_user_sig

    if sys.argv[1] == "configured":
        logging.basicConfig(filename=sys.argv[2], level=logging.WARNING)

    async def main():
        server = SignalingServer(1400000001, "k" * 32)
        url = await server.start("127.0.0.1", 0)
        first, second = CallEngine(url), CallEngine(url)
        kicked = asyncio.Event()

        def broken(res):
            kicked.set()
            raise RuntimeError("boom in my listener")

        async def broken_async(res):
            raise KeyError("boom in my coroutine listener")

        first.add_event_listener("onKickedOffline", broken)
        first.add_event_listener("onKickedOffline", broken_async)
        sig = gen_user_sig(1400000001, "k" * 32, "alice", 600)
        await first.init(1400000001, "alice", sig)
        await second.init(1400000001, "alice", sig)  # displaces the first device
        await asyncio.wait_for(kicked.wait(), 10)
        await asyncio.sleep(0.2)
        await first.destroy(); await second.destroy(); await server.stop()
        print("engine went on")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["unconfigured", "configured"])
def test_listener_that_raises_is_never_silent(tmp_path, mode: str) -> None:
    log_file = tmp_path / "app.log"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(log_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "engine went on" in run.stdout
    # unconfigured: on stderr (like asyncio); configured: where the application said, once
    seen = run.stderr if mode == "unconfigured" else log_file.read_text()
    assert "listener" in seen and "onKickedOffline raised" in seen, seen
    assert "RuntimeError: boom in my listener" in seen
    assert "KeyError: 'boom in my coroutine listener'" in seen
    if mode == "configured":
        assert "boom" not in run.stderr, run.stderr
        assert seen.count("RuntimeError: boom in my listener") == 1
