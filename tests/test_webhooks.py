"""Webhooks: signed, at least once from the durable outbox, retried with backoff, never
delaying calls; against a real aiohttp receiver, with SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.records import RecordQuery
from callkit.signaling.records.tracker import (
    AFTER_END_CALL,
    AFTER_MEMBER_CHANGED,
    AFTER_START_CALL,
)
from callkit.signaling.records.webhooks import backoff, sign, verify

from .conftest import SDK_APP_ID, SECRET
from .test_records import connected_call
from .webhook_receiver import WebhookReceiver

HOOK_SECRET = "whsec-test-0123456789"


def test_signature_rejects_forgeries_and_replays() -> None:
    body = b'{"CallbackCommand":"Call.CallbackAfterEndCall"}'
    now = 1_700_000_000
    headers = {"X-Callkit-Timestamp": str(now), "X-Callkit-Signature": sign(HOOK_SECRET, now, body)}
    assert verify(HOOK_SECRET, headers, body, now=now + 10)
    assert not verify("other-secret", headers, body, now=now)
    assert not verify(HOOK_SECRET, headers, body + b" ", now=now)  # tampered body
    assert not verify(HOOK_SECRET, headers, body, now=now + 301)  # replayed later
    moved = {**headers, "X-Callkit-Timestamp": str(now + 100)}  # timestamp swapped
    assert not verify(HOOK_SECRET, moved, body, now=now + 100)
    assert not verify(HOOK_SECRET, {}, body, now=now)
    assert not verify(HOOK_SECRET, {**headers, "X-Callkit-Timestamp": "x"}, body, now=now)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempts in range(12):
        top = min(60.0, 0.5 * 2**attempts)
        values = [backoff(attempts, 0.5, 60.0, rng) for _ in range(50)]
        assert all(top / 2 <= v < top for v in values)
        assert len(set(values)) > 40  # jittered
    assert backoff(10_000, 0.5, 60.0, rng) < 60.0


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    rec = WebhookReceiver(HOOK_SECRET)
    await rec.start()
    yield rec
    await rec.stop()


async def hooked_server(db: str, url: str) -> SignalingServer:
    srv = SignalingServer(
        SDK_APP_ID,
        SECRET,
        ServerConfig(heartbeat=2.0),
        db=db,
        webhooks=[url],
        webhook_secret=HOOK_SECRET,
        webhook_timeout=2.0,
    )
    assert srv.records.deliverer is not None
    srv.records.deliverer.base_delay = 0.1  # fast retries for the test
    srv.records.deliverer.poll = 0.2
    await srv.start("127.0.0.1", 0)
    return srv


async def test_failed_deliveries_are_retried_until_acknowledged(
    db_url: str,
    receiver: WebhookReceiver,
) -> None:
    receiver.fail_first = 4
    srv = await hooked_server(db_url, receiver.url)
    try:
        ca, cb, call_id = await connected_call(srv, "alice", "bob")
        await ca.request("hangup", callId=call_id)
        await cb.event("onCallEnd")
        await receiver.wait_for(lambda r: len(r.delivered()) == 5, what="5 events acknowledged")
        delivered = receiver.delivered()
        commands = sorted(b["CallbackCommand"] for b in delivered.values())
        assert commands.count(AFTER_START_CALL) == 1 and commands.count(AFTER_END_CALL) == 1
        assert commands.count(AFTER_MEMBER_CHANGED) == 3  # bob joined, bob left, alice left
        end = next(b for b in delivered.values() if b["CallbackCommand"] == AFTER_END_CALL)
        info = end["EventInfo"]
        assert info["callId"] == call_id and info["callResult"] == "NormalEnd"
        assert info["startTime"] <= info["acceptTime"] <= info["endTime"]
        assert end["SdkAppId"] == SDK_APP_ID and end["EventId"] in delivered
        assert all(a.signed for a in receiver.attempts)
        assert all(
            a.query == {"SdkAppid": str(SDK_APP_ID), "CallbackCommand": a.body["CallbackCommand"],
                        "contenttype": "json"}
            for a in receiver.attempts
        )  # fmt: skip
        failed = [a for a in receiver.attempts if a.status != 200]
        assert len(failed) == 4
        for a in failed:  # every failed event was retried under the same idempotency key
            retries = [b for b in receiver.attempts if b.event_id == a.event_id]
            assert retries[-1].status == 200
            assert [b.attempt for b in retries] == list(range(1, len(retries) + 1))
            gaps = [y.at - x.at for x, y in itertools.pairwise(retries)]
            assert all(g >= 0.04 for g in gaps), gaps  # waited (base 0.1 s, jitter >= 0.5)
        assert srv.records.deliverer is not None and srv.records.deliverer.failures == 4
        await asyncio.sleep(0.3)
        assert await srv.records.backlog() == 0
        await ca.close()
        await cb.close()
    finally:
        await srv.stop()


async def test_a_hanging_receiver_never_delays_calls(
    db_url: str,
    receiver: WebhookReceiver,
) -> None:
    receiver.delay = 30.0  # answers after the attempt's timeout (2 s)
    srv = await hooked_server(db_url, receiver.url)
    try:
        t0 = time.perf_counter()
        for i in range(5):
            ca, cb, call_id = await connected_call(srv, f"a{i}", f"b{i}")
            await ca.request("hangup", callId=call_id)
            await cb.event("onCallEnd")
            await ca.close()
            await cb.close()
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, f"5 calls took {elapsed:.2f} s with a hanging receiver"
        assert await srv.records.backlog() > 0  # still owed, not dropped
        await srv.records.flush()
        records, _ = await srv.records.query(RecordQuery(page_size=100))
        status = [r.call_result.value for r in records]
        assert status.count("NormalEnd") == 5
    finally:
        await srv.stop()


async def test_webhooks_survive_a_restart(
    db_url: str,
    receiver: WebhookReceiver,
) -> None:
    receiver.accepting = False
    srv = await hooked_server(db_url, receiver.url)
    ca, cb, call_id = await connected_call(srv, "alice", "bob")
    await ca.request("hangup", callId=call_id)
    await cb.event("onCallEnd")
    await ca.close()
    await cb.close()
    await receiver.wait_for(lambda r: len(r.attempts) >= 2, what="a refused delivery")
    await srv.stop()  # an orderly stop: the outbox stays in the database
    assert receiver.delivered() == {}
    receiver.accepting = True
    srv = await hooked_server(db_url, receiver.url)
    try:
        await receiver.wait_for(
            lambda r: len(r.delivered()) == 5, what="5 events delivered after the restart"
        )
        assert {b["EventInfo"]["callId"] for b in receiver.delivered().values()} == {call_id}
    finally:
        await srv.stop()


async def test_redirects_are_not_followed(receiver: WebhookReceiver, tmp_path: Any) -> None:
    """A 3xx is a failed delivery (retried), never a hop to wherever it points."""
    from aiohttp import web

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(receiver.url)

    app = web.Application()
    app.router.add_post("/bounce", bounce)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv = await hooked_server(f"sqlite://{tmp_path / 'r.db'}", f"http://127.0.0.1:{port}/bounce")
    try:
        ca, cb, _ = await connected_call(srv, "alice", "bob")
        deliverer = srv.records.deliverer
        assert deliverer is not None
        for _ in range(100):
            if deliverer.failures >= 2:
                break
            await asyncio.sleep(0.05)
        assert deliverer.failures >= 2 and deliverer.delivered == 0
        assert receiver.attempts == []
        await ca.close()
        await cb.close()
    finally:
        await srv.stop()
        await runner.cleanup()
