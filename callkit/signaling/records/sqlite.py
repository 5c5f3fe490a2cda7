"""SQLite records store: one connection owned by one worker thread.

Every call runs in that thread (``run_in_executor``), so the event loop never waits on the
disk; the writer batches a burst of changes into one transaction. WAL mode: readers do not
block the writer, and a committed transaction survives the process being killed.
We use the standard library's ``sqlite3`` in a thread rather than aiosqlite (which does the
same thing with one more dependency).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .migrations import SCHEMA_VERSION, SchemaTooNew, migration
from .model import CallRecord
from .store import (
    CLAIM_DUE,
    GET_CALL,
    INSERT_OUTBOX,
    INSERT_USER,
    LIVE_CALLS,
    TOUCH_LIVE,
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

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore(RecordStore):
    """Records in a SQLite file (created if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite://{path}"
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._pool is None or self._db is None:
            raise StoreError("the records store is not open")
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, db)

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="callkit-sqlite")

        def connect() -> sqlite3.Connection:
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StoreError(f"cannot create {self.path}: {parent} is not a directory")
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            return db

        loop = asyncio.get_running_loop()
        try:
            self._db = await loop.run_in_executor(self._pool, connect)
            await self._run(_migrate)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        db, self._db = self._db, None
        if pool is not None:
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(pool, db.close)
            pool.shutdown(wait=False)

    async def schema_version(self) -> int:
        return await self._run(_version)

    async def write(self, writes: list[Write], urls: list[str], now: int) -> None:
        records, _ = coalesce(writes)

        def tx(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(UPSERT_CALL, [call_row(r) for r in records])
                db.executemany(
                    INSERT_USER,
                    [(r.call_id, u, r.start_time) for r in records for u in r.members],
                )
                db.executemany(
                    INSERT_OUTBOX,
                    [
                        (e.event_id, url, e.command, e.body, now, now)
                        for w in writes
                        for e in w.events
                        for url in urls
                    ],
                )

        await self._run(tx)

    async def touch_live(self, now: int, call_ids: list[str]) -> None:
        def tx(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(TOUCH_LIVE, [(now, c) for c in call_ids])

        await self._run(tx)

    async def live_records(self, seen_before: int) -> list[CallRecord]:
        rows = await self._run(lambda db: db.execute(LIVE_CALLS, (seen_before,)).fetchall())
        return [from_row(*row) for row in rows]

    async def get(self, call_id: str) -> CallRecord | None:
        row = await self._run(lambda db: db.execute(GET_CALL, (call_id,)).fetchone())
        return None if row is None else from_row(*row)

    async def query(self, q: RecordQuery) -> tuple[list[CallRecord], int]:
        count_sql, page_sql, count_params, page_params = q.select()

        def run(db: sqlite3.Connection) -> tuple[list[Any], int]:
            total = db.execute(count_sql, count_params).fetchone()[0]
            return db.execute(page_sql, page_params).fetchall(), int(total)

        rows, total = await self._run(run)
        return [from_row(*row) for row in rows], total

    async def delete(self, call_ids: list[str]) -> int:
        def tx(db: sqlite3.Connection) -> int:
            with _transaction(db):
                n = 0
                for call_id in call_ids:
                    n += db.execute(
                        "DELETE FROM callkit_calls WHERE call_id = ?", (call_id,)
                    ).rowcount
                    db.execute("DELETE FROM callkit_call_users WHERE call_id = ?", (call_id,))
                return n

        return await self._run(tx)

    async def hide(self, user: str, call_ids: list[str]) -> list[str]:
        sql = (
            "UPDATE callkit_call_users SET hidden = 1"
            " WHERE call_id = ? AND user_id = ? AND hidden = 0"
        )

        def tx(db: sqlite3.Connection) -> list[str]:
            with _transaction(db):
                return [c for c in call_ids if db.execute(sql, (c, user)).rowcount]

        return await self._run(tx)

    async def claim_due(self, now: int, limit: int, lease_until: int) -> list[OutboxItem]:
        sql = CLAIM_DUE.replace("{lock}", "")

        def tx(db: sqlite3.Connection) -> list[Any]:
            with _transaction(db):
                return db.execute(sql, (lease_until, now, limit)).fetchall()

        return [OutboxItem(*row) for row in await self._run(tx)]

    async def delivered(self, item_ids: list[int]) -> None:
        def tx(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany("DELETE FROM callkit_outbox WHERE id = ?", [(i,) for i in item_ids])

        await self._run(tx)

    async def failed(self, item_id: int, next_attempt_at: int, error: str) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE callkit_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?",
                (next_attempt_at, error[:500], item_id),
            )
        )

    async def backlog(self) -> int:
        return await self._run(
            lambda db: int(db.execute("SELECT COUNT(*) FROM callkit_outbox").fetchone()[0])
        )


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _version(db: sqlite3.Connection) -> int:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'callkit_schema'"
    ).fetchone()
    if not exists:
        return 0
    row = db.execute("SELECT version FROM callkit_schema").fetchone()
    return int(row[0]) if row else 0


def _migrate(db: sqlite3.Connection) -> None:
    with _transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS callkit_schema (version INTEGER NOT NULL)")
        found = _version(db)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for step in range(found, SCHEMA_VERSION):
            for statement in migration(step, "INTEGER PRIMARY KEY AUTOINCREMENT"):
                db.execute(statement)
        if found == 0:
            db.execute("INSERT INTO callkit_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found < SCHEMA_VERSION:
            db.execute("UPDATE callkit_schema SET version = ?", (SCHEMA_VERSION,))
