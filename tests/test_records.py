"""Call records in real databases (SQLite and a real PostgreSQL), through a real server:
the store, migrations, the admin REST API and the engine's own-history methods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callkit import CallEngine, CallError
from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.records import (
    SCHEMA_VERSION,
    RecordQuery,
    SchemaTooNew,
    StoreError,
    open_store,
)
from callkit.signaling.records.tracker import RecordTracker

from .conftest import SDK_APP_ID, SECRET, sig
from .postgres_server import PostgresCluster
from .test_server import RawClient, login


@pytest.fixture
async def rserver(db_url: str) -> AsyncIterator[SignalingServer]:
    srv = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(heartbeat=2.0), db=db_url)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


ADMIN = {"Authorization": f"Bearer {sig('administrator')}"}


def base(server: SignalingServer) -> str:
    return (server.url or "").replace("ws://", "http://").replace("/ws", "")


async def api(
    server: SignalingServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, base(server) + path, headers=ADMIN if headers is None else headers
        ) as r,
    ):
        return r.status, await r.json()


async def connected_call(
    server: SignalingServer, a: str, b: str
) -> tuple[RawClient, RawClient, str]:
    ca, cb = await login(server.url or "", a), await login(server.url or "", b)
    reply = await ca.request("call", callees=[b], mediaType=1, userData="order-42")
    call_id = reply["data"]["call"]["callId"]
    await cb.event("onCallReceived")
    assert (await cb.request("accept", callId=call_id))["type"] == "ok"
    await ca.event("onCallBegin")
    return ca, cb, call_id


# ------------------------------------------------------------------ store


async def test_migrations_are_versioned_and_a_newer_schema_is_refused(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    store = open_store(db_url)
    await store.open()  # again: nothing to do
    assert await store.schema_version() == SCHEMA_VERSION
    if db_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(db_url[len("sqlite://") :])
        db.execute("UPDATE callkit_schema SET version = 99")
        db.commit()
        db.close()
    else:
        import asyncpg

        con = await asyncpg.connect(db_url)
        await con.execute("UPDATE callkit_schema SET version = 99")
        await con.close()
    await store.close()
    with pytest.raises(SchemaTooNew, match="version 99 is newer than this callkit knows"):
        await open_store(db_url).open()
    server = SignalingServer(SDK_APP_ID, SECRET, db=db_url)
    with pytest.raises(SchemaTooNew):
        await server.start("127.0.0.1", 0)
    await server.stop()


def test_bad_db_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql://x")
    with pytest.raises(ValueError, match="need a records database"):
        SignalingServer(SDK_APP_ID, SECRET, webhooks=["http://127.0.0.1:1/"], webhook_secret="s")
    with pytest.raises(ValueError, match="secret"):
        SignalingServer(SDK_APP_ID, SECRET, db="sqlite://x.db", webhooks=["http://127.0.0.1:1/"])


async def test_unreachable_postgres_gives_a_clear_error() -> None:
    store = open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()


async def test_query_filters_and_pages(db_url: str) -> None:
    from callkit.signaling.callstate import CallRegistry
    from callkit.signaling.codes import CallMediaType

    store = open_store(db_url)
    await store.open()
    reg, tracker = CallRegistry(), RecordTracker(SDK_APP_ID)
    writes = []
    for i in range(7):  # alice calls bob 5 times (rejected), carol twice (group, cancelled)
        t = 1_000_000 + i * 1000
        callee = ["bob"] if i < 5 else ["carol", "dan"]
        call, notes = reg.start_call(
            t, "alice", callee, CallMediaType.AUDIO, group_id="g" if i >= 5 else ""
        )
        tracker.start(t, call)
        writes += tracker.apply(t, notes, reg.calls, actor="alice")
        notes = (
            reg.reject(t, "bob", call.call_id) if i < 5 else reg.hangup(t, "alice", call.call_id)
        )
        writes += tracker.apply(t + 500, notes, reg.calls, actor="bob" if i < 5 else "alice")
    await store.write(writes, [], 0)
    records, total = await store.query(RecordQuery(user="bob", page_size=2))
    assert total == 5 and len(records) == 2
    assert records[0].start_time > records[1].start_time  # newest first
    page3, _ = await store.query(RecordQuery(user="bob", page=3, page_size=2))
    assert len(page3) == 1
    _, total = await store.query(RecordQuery(result="Cancel"))
    assert total == 2
    _, total = await store.query(RecordQuery(call_type="group", user="dan"))
    assert total == 2
    _, total = await store.query(RecordQuery(since=1_002_000, until=1_004_000))
    assert total == 2
    first = records[0].call_id
    assert await store.hide("bob", [first, "nope"]) == [first]
    assert await store.hide("bob", [first]) == []
    _, total = await store.query(RecordQuery(user="bob", visible_to_user=True))
    assert total == 4
    _, total = await store.query(RecordQuery(user="alice", visible_to_user=True))
    assert total == 7  # alice still sees it
    assert await store.delete([first]) == 1
    assert await store.get(first) is None
    await store.close()


# ------------------------------------------------------------------ through the server


async def test_call_record_via_rest_live_then_ended(rserver: SignalingServer) -> None:
    ca, cb, call_id = await connected_call(rserver, "alice", "bob")
    status, live = await api(rserver, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and live["callResult"] == "" and live["acceptTime"] > 0
    assert live["userData"] == "order-42" and live["sdkAppId"] == SDK_APP_ID
    await ca.request("hangup", callId=call_id)
    await cb.event("onCallEnd")
    await rserver.records.flush()
    status, rec = await api(rserver, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and rec["callResult"] == "NormalEnd"
    assert set(rec) >= {
        "callId", "sdkAppId", "caller", "callees", "mediaType", "callType", "roomId",
        "groupId", "userData", "startTime", "acceptTime", "endTime", "callResult", "members",
    }  # fmt: skip
    assert rec["startTime"] <= rec["acceptTime"] <= rec["endTime"]
    status, page = await api(rserver, "GET", "/v1/records?user=bob&result=NormalEnd&type=single")
    assert status == 200 and page["total"] == 1 and page["page"] == 1
    assert page["records"][0]["callId"] == call_id
    status, _ = await api(rserver, "DELETE", f"/v1/records/{call_id}")
    assert status == 200
    status, err = await api(rserver, "GET", f"/v1/calls/{call_id}")
    assert status == 404 and err["code"] == -1202
    await ca.close()
    await cb.close()


async def test_operator_ends_a_live_call(rserver: SignalingServer) -> None:
    ca, cb, call_id = await connected_call(rserver, "alice", "bob")
    status, body = await api(rserver, "POST", f"/v1/calls/{call_id}/end")
    assert status == 200 and body["ended"] is True
    assert (await ca.event("onCallEnd"))["payload"]["callRole"] == 1
    assert (await cb.event("onCallEnd"))["payload"]["callRole"] == 2
    await rserver.records.flush()
    status, rec = await api(rserver, "GET", f"/v1/calls/{call_id}")
    assert rec["callResult"] == "EndByServer"
    assert {m["leftReason"] for m in rec["members"]} == {"EndByServer"}
    status, _ = await api(rserver, "POST", f"/v1/calls/{call_id}/end")
    assert status == 404
    assert (await ca.request("call", callees=["bob"], mediaType=1))["type"] == "ok"  # idle again
    await ca.close()
    await cb.close()


async def test_admin_api_needs_the_administrator_usersig(rserver: SignalingServer) -> None:
    ca, cb, call_id = await connected_call(rserver, "alice", "bob")
    from callkit.signaling.usersig import gen_user_sig

    expired = gen_user_sig(SDK_APP_ID, SECRET, "administrator", expire=1, now=1000)
    forged = [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {sig('administrator')}"},
        {"Authorization": f"Bearer {sig('alice')}"},  # a user's own sig is not an admin's
        {"Authorization": f"Bearer {gen_user_sig(SDK_APP_ID, 'wrong', 'administrator')}"},
        {"Authorization": f"Bearer {expired}"},
    ]
    paths = [
        ("GET", "/calls"),
        ("GET", "/users/alice"),
        ("GET", f"/v1/calls/{call_id}"),
        ("GET", "/v1/records"),
        ("POST", f"/v1/calls/{call_id}/end"),
        ("DELETE", f"/v1/records/{call_id}"),
        ("GET", "/metrics"),
    ]
    for headers in forged:
        for method, path in paths:
            status, body = await api(rserver, method, path, headers)
            assert status == 401, (headers, path)
            assert body["code"] == -1201 and body["error"]
    assert rserver.registry.calls  # nothing was ended
    status, _ = await api(rserver, "GET", "/health", {})
    assert status == 200
    for query in ("page=0", "pageSize=1000", "user=bad%20id", "result=Nope", "type=x", "since=x"):
        status, body = await api(rserver, "GET", f"/v1/records?{query}")
        assert status == 400 and body["code"] == -1202, query
    status, _ = await api(rserver, "DELETE", f"/v1/records/{call_id}")
    assert status == 409  # live
    await ca.close()
    await cb.close()


async def test_metrics_in_prometheus_format(rserver: SignalingServer) -> None:
    ca, cb, call_id = await connected_call(rserver, "alice", "bob")
    async with (
        aiohttp.ClientSession() as http,
        http.get(base(rserver) + "/metrics", headers=ADMIN) as r,
    ):
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["callkit_connected_users"] == 2
    assert values["callkit_live_calls"] == 1
    assert values["callkit_call_setups_total"] >= 1
    assert "callkit_event_loop_lag_seconds" in values
    assert values["callkit_webhook_backlog"] == 0
    await ca.request("hangup", callId=call_id)
    await cb.event("onCallEnd")
    async with (
        aiohttp.ClientSession() as http,
        http.get(base(rserver) + "/metrics", headers=ADMIN) as r,
    ):
        assert 'callkit_call_results_total{result="NormalEnd"} 1.0' in await r.text()
    await ca.close()
    await cb.close()


async def test_engine_reads_and_deletes_only_its_own_history(rserver: SignalingServer) -> None:
    ca, cb, ab = await connected_call(rserver, "alice", "bob")
    await ca.request("hangup", callId=ab)
    await cb.event("onCallEnd")
    cc, cd, cd_call = await connected_call(rserver, "carol", "dave")
    await cc.request("hangup", callId=cd_call)
    await cd.event("onCallEnd")
    await rserver.records.flush()
    engines = {u: CallEngine(rserver.url or "") for u in ("alice", "bob", "carol")}
    for user, engine in engines.items():
        await engine.init(SDK_APP_ID, user, sig(user))
    try:
        mine = await engines["alice"].query_recent_calls()
        assert [r["callId"] for r in mine] == [ab] and mine[0]["callResult"] == "NormalEnd"
        assert [r["callId"] for r in await engines["carol"].query_recent_calls()] == [cd_call]
        assert await engines["alice"].query_recent_calls(result="Reject") == []
        # attack: carol tries to delete alice's and bob's call, and to read it
        assert await engines["carol"].delete_record_calls([ab]) == []
        assert [r["callId"] for r in await engines["bob"].query_recent_calls()] == [ab]
        assert ab not in [r["callId"] for r in await engines["carol"].query_recent_calls()]
        # bob removes it from his own history; alice keeps hers
        assert await engines["bob"].delete_record_calls([ab]) == [ab]
        assert await engines["bob"].query_recent_calls() == []
        assert [r["callId"] for r in await engines["alice"].query_recent_calls()] == [ab]
        status, _ = await api(rserver, "GET", f"/v1/calls/{ab}")
        assert status == 200  # the operator's record is untouched
        with pytest.raises(CallError) as err:
            await engines["alice"].query_recent_calls(page_size=1000)
        assert err.value.code == -1202
        with pytest.raises(CallError):
            await engines["alice"].delete_record_calls("not-a-list")  # type: ignore[arg-type]
    finally:
        await asyncio.gather(*(e.destroy() for e in engines.values()))
        for c in (ca, cb, cc, cd):
            await c.close()


async def test_records_need_a_database(server: SignalingServer) -> None:
    status, body = await api(server, "GET", "/v1/records")
    assert status == 503 and "--db" in body["error"]
    engine = CallEngine(server.url or "")
    await engine.init(SDK_APP_ID, "alice", sig("alice"))
    with pytest.raises(CallError, match="--db"):
        await engine.query_recent_calls()
    await engine.destroy()


async def test_a_database_outage_delays_no_call_and_loses_no_record(
    pg_cluster: PostgresCluster,
) -> None:
    import asyncpg

    url = await pg_cluster.create_db()
    name = url.rsplit("/", 1)[1]
    srv = SignalingServer(SDK_APP_ID, SECRET, db=url)
    await srv.start("127.0.0.1", 0)
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        t0 = asyncio.get_running_loop().time()
        ids = []
        for i in range(3):
            ca, cb, call_id = await connected_call(srv, f"a{i}", f"b{i}")
            await ca.request("hangup", callId=call_id)
            await cb.event("onCallEnd")
            await ca.close()
            await cb.close()
            ids.append(call_id)
        assert asyncio.get_running_loop().time() - t0 < 3.0  # calls went on
        writer = srv.records.writer
        assert writer is not None
        for _ in range(100):
            if writer.write_errors:
                break
            await asyncio.sleep(0.05)
        assert writer.write_errors > 0 and writer.pending > 0
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await srv.records.flush(15)
        assert writer.pending == 0
        for call_id in ids:
            status, rec = await api(srv, "GET", f"/v1/calls/{call_id}")
            assert status == 200 and rec["callResult"] == "NormalEnd"
    finally:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await admin.close()
        await srv.stop()
        await pg_cluster.drop_db(url)


class StalledStore:
    """A real store whose ``write`` waits for ``gate`` first and never runs a second batch
    (the server is killed while it waits): what a crash leaves behind."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, writes: Any, urls: list[str], now: int) -> None:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()  # killed before this batch commits
        await self.gate.wait()
        await self.inner.write(writes, urls, now)


async def test_a_committed_record_never_runs_ahead_of_its_webhooks(db_url: str) -> None:
    """A batch writes the records as they were when submitted: a change made while the
    batch waits for the database (an accept) goes with its own Join webhook in the next
    batch, so a crash in between cannot store a joined member whose Join event is lost."""
    from callkit.signaling.callstate import CallRegistry
    from callkit.signaling.codes import CallMediaType
    from callkit.signaling.records.writer import RecordWriter

    store = StalledStore(open_store(db_url))
    tracker = RecordTracker(SDK_APP_ID, webhooks=True)
    writer = RecordWriter(store, ["http://127.0.0.1:9/hook"], heartbeat=60)  # type: ignore[arg-type]
    await writer.start()
    try:
        reg = CallRegistry()
        call, notifies = reg.start_call(100.0, "alice", ["bob"], CallMediaType.AUDIO)
        tracker.start(100_000, call)
        writer.submit(tracker.apply(100_000, notifies, reg.calls, actor="alice"))
        while store.calls < 1:  # the first batch is waiting for the database
            await asyncio.sleep(0.01)
        writer.submit(tracker.apply(101_000, reg.accept(101.0, "bob", call.call_id), reg.calls))
        store.gate.set()
        for _ in range(200):  # the first batch commits; the second never will
            if store.calls > 1:
                break
            await asyncio.sleep(0.01)
        assert store.calls == 2
        stored = await store.inner.get(call.call_id)
        assert stored is not None
        assert stored.accept_time == 0 and stored.members["bob"].joined_time == 0
    finally:
        writer._task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(writer._task, return_exceptions=True)  # type: ignore[arg-type]
        await store.inner.close()
