"""Versioned schema of the records database (the same tables in SQLite and PostgreSQL).

``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``; the version lives in
``callkit_schema``. Add a migration at the end, never edit one that shipped. A database
whose version is newer than ``len(MIGRATIONS)`` is refused (:class:`SchemaTooNew`).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migration"]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer callkit than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"records database schema version {found} is newer than this callkit knows "
            f"(up to {known}); upgrade callkit or point --db at another database"
        )
        self.found = found
        self.known = known


#: one list of statements per version step; ``{serial}`` is the dialect's auto-increment key
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE callkit_calls (
            call_id TEXT PRIMARY KEY,
            sdk_app_id BIGINT NOT NULL,
            caller TEXT NOT NULL,
            call_type TEXT NOT NULL,
            media_type INTEGER NOT NULL,
            call_result TEXT NOT NULL,
            start_time BIGINT NOT NULL,
            end_time BIGINT NOT NULL,
            live INTEGER NOT NULL,
            last_seen BIGINT NOT NULL,
            data TEXT NOT NULL)""",
        "CREATE INDEX callkit_calls_start ON callkit_calls (start_time)",
        "CREATE INDEX callkit_calls_live ON callkit_calls (live)",
        """CREATE TABLE callkit_call_users (
            call_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            start_time BIGINT NOT NULL,
            hidden INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (call_id, user_id))""",
        "CREATE INDEX callkit_call_users_user ON callkit_call_users (user_id, start_time)",
        """CREATE TABLE callkit_outbox (
            id {serial},
            event_id TEXT NOT NULL,
            url TEXT NOT NULL,
            command TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            UNIQUE (event_id, url))""",
        "CREATE INDEX callkit_outbox_due ON callkit_outbox (next_attempt_at)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def migration(step: int, serial: str) -> list[str]:
    """The statements of migration ``step`` for a dialect whose auto-increment key is
    ``serial``."""
    return [s.replace("{serial}", serial) for s in MIGRATIONS[step]]
