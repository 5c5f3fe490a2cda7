"""PostgreSQL records store (asyncpg pool), for several server processes on one database.

Same tables and SQL as SQLite (:mod:`.store`), with ``$n`` placeholders; claiming outbox
items uses ``FOR UPDATE SKIP LOCKED`` so that several servers deliver each item once per
lease. Migrations run under an advisory lock so two servers starting at once do not race.
"""

from __future__ import annotations

import re
from typing import Any

from .migrations import SCHEMA_VERSION, SchemaTooNew, migration
from .model import CallRecord
from .store import (
    CLAIM_DUE,
    GET_CALL,
    INSERT_OUTBOX,
    INSERT_USER,
    LIVE_CALLS,
    UPSERT_CALL,
    OutboxItem,
    RecordQuery,
    RecordStore,
    StoreError,
    call_row,
    coalesce,
    from_row,
)
from .tracker import Write

__all__ = ["PostgresStore"]

_MIGRATION_LOCK = 0x63616C6C  # "call": advisory lock key held while migrating


def _numbered(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PostgresStore(RecordStore):
    """Records in PostgreSQL (``postgresql://user:password@host:port/db``)."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self.dsn = dsn
        self.url = _redact(dsn)
        self._sizes = (min_size, max_size)
        self._pool: Any = None
        self.shared = True

    def _require(self) -> Any:
        if self._pool is None:
            raise StoreError("the records store is not open")
        return self._pool

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError(
                "PostgreSQL records need asyncpg: pip install 'callkit[postgres]'"
            ) from exc
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._sizes[0], max_size=self._sizes[1], timeout=10
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to {self.url}: {exc}") from exc
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS callkit_schema (version INTEGER NOT NULL)"
                )
                found = await con.fetchval("SELECT version FROM callkit_schema") or 0
                if found > SCHEMA_VERSION:
                    raise SchemaTooNew(found, SCHEMA_VERSION)
                for step in range(found, SCHEMA_VERSION):
                    for statement in migration(step, "BIGSERIAL PRIMARY KEY"):
                        await con.execute(statement)
                if found == 0:
                    await con.execute(
                        "INSERT INTO callkit_schema (version) VALUES ($1)", SCHEMA_VERSION
                    )
                elif found < SCHEMA_VERSION:
                    await con.execute("UPDATE callkit_schema SET version = $1", SCHEMA_VERSION)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def schema_version(self) -> int:
        return int(await self._require().fetchval("SELECT version FROM callkit_schema") or 0)

    async def write(self, writes: list[Write], urls: list[str], now: int) -> None:
        records, _ = coalesce(writes)
        outbox = [
            (e.event_id, url, e.command, e.body, now, now)
            for w in writes
            for e in w.events
            for url in urls
        ]
        async with self._require().acquire() as con, con.transaction():
            await con.executemany(_numbered(UPSERT_CALL), [call_row(r) for r in records])
            await con.executemany(
                _numbered(INSERT_USER),
                [(r.call_id, u, r.start_time) for r in records for u in r.members],
            )
            if outbox:
                await con.executemany(_numbered(INSERT_OUTBOX), outbox)

    async def touch_live(self, now: int, call_ids: list[str]) -> None:
        await self._require().execute(
            "UPDATE callkit_calls SET last_seen = $1 WHERE call_id = ANY($2::text[]) AND live = 1",
            now,
            call_ids,
        )

    async def live_records(self, seen_before: int) -> list[CallRecord]:
        rows = await self._require().fetch(_numbered(LIVE_CALLS), seen_before)
        return [from_row(r[0], r[1]) for r in rows]

    async def get(self, call_id: str) -> CallRecord | None:
        row = await self._require().fetchrow(_numbered(GET_CALL), call_id)
        return None if row is None else from_row(row[0], row[1])

    async def query(self, q: RecordQuery) -> tuple[list[CallRecord], int]:
        count_sql, page_sql, count_params, page_params = q.select()
        async with self._require().acquire() as con:
            total = await con.fetchval(_numbered(count_sql), *count_params)
            rows = await con.fetch(_numbered(page_sql), *page_params)
        return [from_row(r[0], r[1]) for r in rows], int(total)

    async def delete(self, call_ids: list[str]) -> int:
        async with self._require().acquire() as con, con.transaction():
            status = await con.execute(
                "DELETE FROM callkit_calls WHERE call_id = ANY($1::text[])", call_ids
            )
            await con.execute(
                "DELETE FROM callkit_call_users WHERE call_id = ANY($1::text[])", call_ids
            )
        return int(status.split()[-1])

    async def hide(self, user: str, call_ids: list[str]) -> list[str]:
        rows = await self._require().fetch(
            "UPDATE callkit_call_users SET hidden = 1"
            " WHERE call_id = ANY($1::text[]) AND user_id = $2 AND hidden = 0 RETURNING call_id",
            call_ids,
            user,
        )
        hidden = {r[0] for r in rows}
        return [c for c in call_ids if c in hidden]

    async def claim_due(self, now: int, limit: int, lease_until: int) -> list[OutboxItem]:
        sql = _numbered(CLAIM_DUE.replace("{lock}", " FOR UPDATE SKIP LOCKED"))
        rows = await self._require().fetch(sql, lease_until, now, limit)
        return [OutboxItem(*r) for r in rows]

    async def delivered(self, item_ids: list[int]) -> None:
        await self._require().execute(
            "DELETE FROM callkit_outbox WHERE id = ANY($1::bigint[])", item_ids
        )

    async def failed(self, item_id: int, next_attempt_at: int, error: str) -> None:
        await self._require().execute(
            "UPDATE callkit_outbox SET attempts = attempts + 1, next_attempt_at = $1,"
            " last_error = $2 WHERE id = $3",
            next_attempt_at,
            error[:500],
            item_id,
        )

    async def backlog(self) -> int:
        return int(await self._require().fetchval("SELECT COUNT(*) FROM callkit_outbox"))
