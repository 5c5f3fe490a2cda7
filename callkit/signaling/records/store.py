"""The records store interface, the SQL both backends share, and :func:`open_store`.

A store keeps call records (one row per call plus one per member, for queries by user)
and the webhook outbox, in one database so that a record change and the webhooks it
causes are written in one transaction. Backends: :mod:`.sqlite` (default, a worker
thread) and :mod:`.postgres` (asyncpg pool). Placeholders are written ``?`` here; the
PostgreSQL backend numbers them.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Any

from .model import CallRecord
from .tracker import Write

__all__ = ["OutboxItem", "RecordQuery", "RecordStore", "StoreError", "open_store"]


class StoreError(Exception):
    """A records database problem (bad URL, unreachable, refused schema)."""


@dataclass(frozen=True)
class OutboxItem:
    """A webhook delivery claimed from the outbox."""

    id: int
    event_id: str
    url: str
    command: str
    body: str
    attempts: int
    created_at: int


@dataclass(frozen=True)
class RecordQuery:
    """Filters of a records query (all optional) and the page to return (1-based)."""

    user: str | None = None
    since: int | None = None
    until: int | None = None
    result: str | None = None
    call_type: str | None = None
    page: int = 1
    page_size: int = 20
    #: only records this user did not delete from its own history (engine queries)
    visible_to_user: bool = False

    def where(self) -> tuple[str, str, list[Any]]:
        """``(join, where, params)`` selecting the matching records."""
        join, clauses, params = "", list[str](), list[Any]()
        if self.user is not None:
            join = " JOIN callkit_call_users u ON u.call_id = c.call_id AND u.user_id = ?"
            params.append(self.user)
            if self.visible_to_user:
                join += " AND u.hidden = 0"
        for clause, value in (
            ("c.start_time >= ?", self.since),
            ("c.start_time < ?", self.until),
            ("c.call_result = ?", self.result),
            ("c.call_type = ?", self.call_type),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return join, where, params

    def select(self) -> tuple[str, str, list[Any], list[Any]]:
        """``(count_sql, page_sql, count_params, page_params)``."""
        join, where, params = self.where()
        count = f"SELECT COUNT(*) FROM callkit_calls c{join}{where}"
        page = (
            f"SELECT c.data, c.last_seen FROM callkit_calls c{join}{where}"
            " ORDER BY c.start_time DESC, c.call_id LIMIT ? OFFSET ?"
        )
        offset = (self.page - 1) * self.page_size
        return count, page, params, [*params, self.page_size, offset]


UPSERT_CALL = (
    "INSERT INTO callkit_calls (call_id, sdk_app_id, caller, call_type, media_type,"
    " call_result, start_time, end_time, live, last_seen, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (call_id) DO UPDATE SET call_result = excluded.call_result,"
    " end_time = excluded.end_time, live = excluded.live, last_seen = excluded.last_seen,"
    " media_type = excluded.media_type, data = excluded.data"
)
INSERT_USER = (
    "INSERT INTO callkit_call_users (call_id, user_id, start_time) VALUES (?, ?, ?)"
    " ON CONFLICT (call_id, user_id) DO NOTHING"
)
INSERT_OUTBOX = (
    "INSERT INTO callkit_outbox (event_id, url, command, body, created_at, next_attempt_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, url) DO NOTHING"
)
CLAIM_DUE = (
    "UPDATE callkit_outbox SET next_attempt_at = ? WHERE id IN (SELECT id FROM callkit_outbox"
    " WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?{lock})"
    " RETURNING id, event_id, url, command, body, attempts, created_at"
)
TOUCH_LIVE = "UPDATE callkit_calls SET last_seen = ? WHERE call_id = ? AND live = 1"
LIVE_CALLS = "SELECT data, last_seen FROM callkit_calls WHERE live = 1 AND last_seen < ?"
GET_CALL = "SELECT data, last_seen FROM callkit_calls WHERE call_id = ?"


def call_row(record: CallRecord) -> tuple[Any, ...]:
    """Parameters of :data:`UPSERT_CALL` for ``record``."""
    return (
        record.call_id,
        record.sdk_app_id,
        record.caller,
        record.call_type.value,
        record.media_type,
        record.call_result.value,
        record.start_time,
        record.end_time,
        1 if record.live else 0,
        record.last_seen,
        json.dumps(record.to_json(), separators=(",", ":")),
    )


def coalesce(writes: list[Write]) -> tuple[list[CallRecord], list[Write]]:
    """The last state of each record in ``writes`` (a batch writes each call once)."""
    latest: dict[str, CallRecord] = {}
    for w in writes:
        latest[w.record.call_id] = w.record
    return list(latest.values()), writes


def from_row(data: str, last_seen: int) -> CallRecord:
    """A record from its stored JSON."""
    return CallRecord.from_json(json.loads(data), last_seen=int(last_seen))


class RecordStore(abc.ABC):
    """Where records and the webhook outbox live. Every method is a coroutine that never
    blocks the event loop; :meth:`open` connects and migrates (raises :class:`StoreError`,
    or :class:`~.migrations.SchemaTooNew`)."""

    #: the URL it was opened from, without a password
    url: str = ""
    #: several servers may share this database (PostgreSQL): a live record is another
    #: server's until it goes stale; otherwise every live record at start is a dead run's
    shared: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close connections; idempotent."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The schema version of the database."""

    @abc.abstractmethod
    async def write(self, writes: list[Write], urls: list[str], now: int) -> None:
        """Upsert the records and queue their webhook events for each URL, atomically."""

    @abc.abstractmethod
    async def touch_live(self, now: int, call_ids: list[str]) -> None:
        """Mark these live records as seen at ``now`` (their server is still alive)."""

    @abc.abstractmethod
    async def live_records(self, seen_before: int) -> list[CallRecord]:
        """Records still marked live and not seen since ``seen_before`` (calls a dead server
        left behind)."""

    @abc.abstractmethod
    async def get(self, call_id: str) -> CallRecord | None:
        """One record, or None."""

    @abc.abstractmethod
    async def query(self, q: RecordQuery) -> tuple[list[CallRecord], int]:
        """A page of matching records, newest first, and the total count."""

    @abc.abstractmethod
    async def delete(self, call_ids: list[str]) -> int:
        """Delete records (admin); returns how many existed."""

    @abc.abstractmethod
    async def hide(self, user: str, call_ids: list[str]) -> list[str]:
        """Remove calls from ``user``'s own history only; returns the ids that were in it."""

    @abc.abstractmethod
    async def claim_due(self, now: int, limit: int, lease_until: int) -> list[OutboxItem]:
        """Claim up to ``limit`` due deliveries (they are not due again before
        ``lease_until``, so a crash mid-delivery retries them later)."""

    @abc.abstractmethod
    async def delivered(self, item_ids: list[int]) -> None:
        """Remove delivered items from the outbox."""

    @abc.abstractmethod
    async def failed(self, item_id: int, next_attempt_at: int, error: str) -> None:
        """Count a failed attempt and schedule the next one."""

    @abc.abstractmethod
    async def backlog(self) -> int:
        """Deliveries not yet acknowledged."""


def open_store(url: str) -> RecordStore:
    """A store for ``sqlite:///abs/path.db`` (``sqlite://rel.db`` or a bare path: relative)
    or ``postgresql://...``; not opened yet."""
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]  # sqlite:///var/x.db -> /var/x.db, sqlite://x.db -> x.db
        if not path:
            raise StoreError(f"no file in {url!r}: use sqlite:///absolute/path.db")
    elif "://" in url:
        raise StoreError(f"unsupported --db {url!r}: use sqlite:///path or postgresql://...")
    else:
        path = url
    from .sqlite import SqliteStore

    return SqliteStore(path)
