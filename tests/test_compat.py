"""callkit.media._compat: targeted versions, and aioice's TURN 438 handling against a real
coturn (on 127.0.0.1) whose nonces go stale after 1 s."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import turn

from callkit.media._compat import TARGETS, version_mismatches
from callkit.signaling.ice import turn_credentials

SECRET = "compat-turn-secret"


def test_installed_versions_are_the_targeted_ones() -> None:
    assert set(TARGETS) == {"aiortc", "aioice"}
    assert version_mismatches() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn's turnserver is not installed (Debian package coturn; `make deb`)")
    port = _free_port()
    relay = 40000 + port % 20000
    (tmp_path / "turn.conf").write_text(
        f"listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n"
        f"min-port={relay}\nmax-port={relay + 20}\nuse-auth-secret\n"
        f"static-auth-secret={SECRET}\nrealm=compat.test\nfingerprint\nno-cli\nno-tls\n"
        "no-dtls\nallow-loopback-peers\nstale-nonce=1\n"
        f"userdb={tmp_path / 'turndb'}\nlog-file={tmp_path / 'turn.log'}\nno-stdout-log\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "turn.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # TCP on the same port opens with UDP
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            time.sleep(0.05)
        else:
            pytest.fail("coturn did not start within 10 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_channel_bind_after_the_nonce_went_stale(coturn: int) -> None:
    """Every ChannelBind after the first waits past the nonce lifetime: coturn answers 438
    with a new nonce, and the bind must still succeed (it fails without the 438 retry)."""
    loop = asyncio.get_running_loop()
    username, password = turn_credentials(SECRET, "alice", 600, time.time())
    transport, _ = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", coturn), username, password
    )
    inner = transport._TurnTransport__inner_protocol  # type: ignore[attr-defined]
    seen: list[int] = []
    orig_request = inner.request

    async def spy(request):  # type: ignore[no-untyped-def]
        try:
            return await orig_request(request)
        except Exception as exc:
            seen.append(getattr(getattr(exc, "response", None), "error_code", 0))
            raise

    inner.request = spy
    peers = []
    try:
        for _ in range(3):
            peer, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            peers.append(peer)
            await asyncio.sleep(1.3)
            await asyncio.wait_for(inner.send_data(b"x", peer.get_extra_info("sockname")), 5)
        assert list(inner.peer_to_channel.values()) == [0x4000, 0x4001, 0x4002]
        assert 438 in seen, f"coturn never sent a 438 (saw {seen}); the test proves nothing"
    finally:
        transport.close()
        for peer in peers:
            peer.close()
        await asyncio.sleep(0.2)
