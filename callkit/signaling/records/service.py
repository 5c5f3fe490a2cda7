"""What the signaling server holds for records: tracker, writer, webhook deliverer, metrics.

The server calls :meth:`RecordService.started` when it creates a call and
:meth:`RecordService.observe` with every batch of notifications it delivers; both are
synchronous and cheap (the database work happens in the writer's task). Without a store
the tracker still runs: live calls can be read, results are counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from ..callstate import Call, Notify
from ..metrics import ServerMetrics
from .model import CallRecord
from .store import RecordQuery, RecordStore, StoreError, open_store
from .tracker import Cause, RecordTracker
from .webhooks import WebhookDeliverer
from .writer import RecordWriter

__all__ = ["RecordService"]

log = logging.getLogger("callkit.signaling.server")


class RecordService:
    """Records, webhooks and the call-lifecycle metrics and log lines of one server."""

    def __init__(
        self,
        sdk_app_id: int,
        metrics: ServerMetrics,
        *,
        db: str | RecordStore | None = None,
        webhooks: list[str] | None = None,
        webhook_secret: str | None = None,
        heartbeat: float = 5.0,
        webhook_timeout: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        urls = list(webhooks or [])
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL must be http:// or https://, got {url!r}")
        if urls and db is None:
            raise ValueError("webhooks need a records database (--db): the outbox lives there")
        if urls and not webhook_secret:
            raise ValueError("webhooks need a secret (--webhook-secret) to sign deliveries")
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.tracker = RecordTracker(sdk_app_id, webhooks=bool(urls))
        self.store: RecordStore | None = open_store(db) if isinstance(db, str) else db
        self.writer: RecordWriter | None = None
        self.deliverer: WebhookDeliverer | None = None
        if self.store is not None:
            if urls:
                assert webhook_secret is not None
                self.deliverer = WebhookDeliverer(
                    self.store,
                    webhook_secret,
                    sdk_app_id,
                    timeout=webhook_timeout,
                    lease=max(2.0, 2 * webhook_timeout),
                    clock_ms=self._now,
                )
                self.deliverer.on_delivered = self._delivered
            self.writer = RecordWriter(
                self.store,
                urls,
                heartbeat=heartbeat,
                clock_ms=self._now,
                on_written=self.deliverer.wake if self.deliverer is not None else None,
                live_ids=lambda: list(self.tracker.live),
            )
            metrics.bind("record_queue", lambda: self.writer.pending if self.writer else 0)
            metrics.bind(
                "record_write_errors", lambda: self.writer.write_errors if self.writer else 0
            )

    def _now(self) -> int:
        return int(self.wall_clock() * 1000)

    def _delivered(self, command: str, seconds: float) -> None:
        self.metrics.webhook_deliveries.inc()
        self.metrics.webhook_latency.observe(max(0.0, seconds))

    async def start(self) -> None:
        """Open the database (migrations, closing interrupted calls), start the tasks."""
        if self.writer is not None:
            await self.writer.start()
            assert self.store is not None
            log.info("call records in %s", self.store.url)
        if self.deliverer is not None:
            self.deliverer.start()

    async def stop(self) -> None:
        """Write what is queued, stop delivering, close the database."""
        if self.deliverer is not None:
            await self.deliverer.stop()
        if self.writer is not None:
            await self.writer.stop()

    # ------------------------------------------------------------------ hooks (sync)

    def started(self, call: Call) -> None:
        """The server created ``call``."""
        self.tracker.start(self._now(), call)
        self.metrics.call_setups.inc()
        log.info(
            "call %s started: %s -> %s (%s, room %d)",
            call.call_id,
            call.caller_id,
            ",".join(u for u in call.members if u != call.caller_id) or "-",
            "video" if int(call.media_type) == 2 else "audio",
            call.room_id,
        )

    def observe(
        self,
        notifies: list[Notify],
        calls: Mapping[str, Call],
        actor: str | None = None,
        cause: Cause = Cause.NORMAL,
    ) -> None:
        """The server delivers ``notifies`` (``calls`` is the registry after the change)."""
        writes = self.tracker.apply(self._now(), notifies, calls, actor=actor, cause=cause)
        for w in writes:
            r = w.record
            if not r.live:
                self.metrics.call_results.labels(r.call_result.value).inc()
                talk = (r.end_time - r.accept_time) / 1000 if r.accept_time else 0.0
                log.info(
                    "call %s ended: %s after %.1f s connected (%d member(s))",
                    r.call_id,
                    r.call_result.value,
                    talk,
                    len(r.members),
                )
        if self.writer is not None:
            self.writer.submit(writes)

    # ------------------------------------------------------------------ reads

    def _require_store(self) -> RecordStore:
        if self.store is None:
            raise StoreError("call records are off (start the server with --db)")
        return self.store

    async def get(self, call_id: str) -> CallRecord | None:
        """A live call's record as it is now, else the stored one."""
        live = self.tracker.live.get(call_id)
        if live is not None:
            return live
        return await self._require_store().get(call_id)

    async def query(self, q: RecordQuery) -> tuple[list[CallRecord], int]:
        """A page of stored records."""
        return await self._require_store().query(q)

    async def delete(self, call_ids: list[str]) -> int:
        """Delete stored records (admin)."""
        return await self._require_store().delete(call_ids)

    async def hide(self, user: str, call_ids: list[str]) -> list[str]:
        """Remove calls from one user's own history."""
        return await self._require_store().hide(user, call_ids)

    async def backlog(self) -> int:
        """Webhook deliveries not yet acknowledged (0 without webhooks)."""
        if self.deliverer is None or self.store is None:
            return 0
        return await self.store.backlog()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until queued record changes are written (tests, benchmarks)."""
        if self.writer is not None:
            await self.writer.flush(timeout)
