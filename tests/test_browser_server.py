"""The server's browser routes: the SDK, the web phone, and the development login."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from callkit import serveconfig
from callkit.cli import build_parser
from callkit.signaling import SignalingServer
from callkit.signaling.usersig import verify_user_sig
from callkit.signaling.webapp import MAX_DEV_BODY

from .conftest import SDK_APP_ID, SECRET


async def _serve(dev_login: bool) -> SignalingServer:
    srv = SignalingServer(SDK_APP_ID, SECRET, dev_login=dev_login)
    await srv.start("127.0.0.1", 0)
    return srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sdk_and_phone_are_served(http) -> None:
    srv = await _serve(dev_login=False)
    base = f"http://127.0.0.1:{srv.port}"
    try:
        async with http.get(base + "/sdk/callkit.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/javascript")
            body = await r.text()
            assert "export class CallEngine" in body
        async with http.get(base + "/") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert "/phone/phone.js" in await r.text()
        for path, kind in (
            ("/phone/phone.js", "text/javascript"),
            ("/phone/phone.css", "text/css"),
        ):
            async with http.get(base + path) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
        # only the listed files: no directory traversal, no listing
        for path in ("/sdk/../webapp.py", "/phone/", "/sdk/", "/phone/%2e%2e/webapp.py"):
            async with http.get(base + path) as r:
                assert r.status == 404, path
        # off by default: no endpoint mints UserSigs
        async with http.post(base + "/dev/usersig", json={"userId": "alice"}) as r:
            assert r.status in (404, 405)
    finally:
        await srv.stop()


async def test_dev_login_mints_a_valid_sig_and_refuses_bad_input(http) -> None:
    srv = await _serve(dev_login=True)
    url = f"http://127.0.0.1:{srv.port}/dev/usersig"
    try:
        async with http.post(url, json={"userId": "alice"}) as r:
            assert r.status == 200
            data = await r.json()
        assert data["sdkAppId"] == SDK_APP_ID and data["userId"] == "alice"
        verify_user_sig(SDK_APP_ID, SECRET, "alice", data["userSig"])
        assert "secret" not in str(data).lower() and SECRET not in str(data)
        bad_bodies: list[bytes] = [
            b"not json",
            b"[]",
            b'{"userId": 5}',
            b'{"userId": ""}',
            b'{"userId": "has space"}',
            b'{"userId": "' + b"x" * 33 + b'"}',
            b'{"other": "alice"}',
        ]
        for body in bad_bodies:
            async with http.post(url, data=body) as r:
                assert r.status == 400, body
                err = await r.json()
                assert err["code"] == -1202 and err["message"], body
        async with http.post(url, data=b"{" + b" " * (MAX_DEV_BODY + 10) + b"}") as r:
            assert r.status == 413
            assert (await r.json())["code"] == -1202
        # the server is still fine
        async with http.get(f"http://127.0.0.1:{srv.port}/health") as r:
            assert r.status == 200
    finally:
        await srv.stop()


def test_cli_dev_login_is_off_by_default() -> None:
    parser = build_parser()
    assert serveconfig.load(parser.parse_args(["serve"]), environ={}).dev_login is False
    on = parser.parse_args(["serve", "--dev-login"])
    assert serveconfig.load(on, environ={}).dev_login is True
    assert serveconfig.load(parser.parse_args(["serve"]), {"CALLKIT_DEV_LOGIN": "1"}).dev_login
