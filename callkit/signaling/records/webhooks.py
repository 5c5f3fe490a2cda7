"""Signed webhook delivery from the durable outbox: at least once, retried with backoff.

Each POST carries the JSON body of a :class:`~.tracker.WebhookEvent` and the headers

- ``X-Callkit-Event-Id`` and ``Idempotency-Key``: the event id (the same on every retry),
- ``X-Callkit-Timestamp``: Unix seconds when this attempt was signed,
- ``X-Callkit-Signature``: ``v1=`` + hex HMAC-SHA256(secret, ``"{timestamp}.{body}"``).

A receiver recomputes the signature (:func:`verify`), rejects timestamps older than a few
minutes (replays) and ignores event ids it has already processed (retries). Any 2xx answer
acknowledges the delivery; anything else (or no answer within ``timeout``) is retried after
``min(max_delay, base_delay * 2**attempts)`` scaled by a random factor in [0.5, 1).
Delivery runs in its own task and never delays call handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from .store import OutboxItem, RecordStore

__all__ = ["SIGNATURE_TOLERANCE", "WebhookDeliverer", "backoff", "sign", "verify"]

log = logging.getLogger("callkit.signaling.webhooks")

#: seconds a receiver should accept a timestamp away from its own clock
SIGNATURE_TOLERANCE = 300


def sign(secret: str, timestamp: int, body: str | bytes) -> str:
    """The ``X-Callkit-Signature`` value for ``body`` sent at ``timestamp``."""
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + raw, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """True when ``body`` was signed with ``secret`` less than ``tolerance`` seconds ago."""
    try:
        timestamp = int(headers["X-Callkit-Timestamp"])
        given = headers["X-Callkit-Signature"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), given)


def backoff(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry number ``attempts + 1``: exponential, capped, with jitter."""
    return min(cap, base * 2 ** min(attempts, 30)) * (0.5 + rng.random() / 2)


class WebhookDeliverer:
    """Posts due outbox items: ``workers`` tasks, each claiming up to ``batch`` items and
    posting them in parallel (claims never overlap: a claimed item is leased)."""

    def __init__(
        self,
        store: RecordStore,
        secret: str,
        sdk_app_id: int,
        *,
        timeout: float = 5.0,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        batch: int = 64,
        workers: int = 4,
        lease: float = 30.0,
        poll: float = 1.0,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.secret = secret
        self.sdk_app_id = sdk_app_id
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.batch = batch
        self.workers = workers
        self.lease = lease
        self.poll = poll
        self.rng = rng or random.SystemRandom()
        self.clock_ms = clock_ms
        self.delivered = 0
        self.failures = 0
        #: called with (command, seconds from the event to its acknowledged delivery)
        self.on_delivered: Callable[[str, float], None] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Start delivering (call inside the running loop)."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [
            asyncio.create_task(self._run(), name=f"callkit-webhooks-{i}")
            for i in range(self.workers)
        ]

    def wake(self) -> None:
        """New items were written: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop; undelivered items stay in the outbox for the next run."""
        self._stopping = True  # (a cancel can be lost inside wait_for on Python < 3.12)
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before reading: a wake during the read is not lost
            try:
                now = self.clock_ms()
                items = await self.store.claim_due(now, self.batch, now + int(self.lease * 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("reading the webhook outbox failed: %s", exc)
                items = []
            if items:
                results = await asyncio.gather(*(self._deliver(item) for item in items))
                await self._acknowledge(
                    [item for item, ok in zip(items, results, strict=True) if ok]
                )
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _acknowledge(self, items: list[OutboxItem]) -> None:
        """Remove delivered items in one transaction (the lease retries them if this fails)."""
        if not items:
            return
        try:
            await self.store.delivered([item.id for item in items])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "removing %d delivered webhook(s) from the outbox failed: %s", len(items), exc
            )
            return
        now = self.clock_ms()
        self.delivered += len(items)
        if self.on_delivered is not None:
            for item in items:
                self.on_delivered(item.command, (now - item.created_at) / 1000)

    async def _deliver(self, item: OutboxItem) -> bool:
        """One attempt; True when acknowledged (a failure is scheduled for a retry)."""
        assert self._http is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Callkit-Event-Id": item.event_id,
            "Idempotency-Key": item.event_id,
            "X-Callkit-Timestamp": str(timestamp),
            "X-Callkit-Signature": sign(self.secret, timestamp, item.body),
            "X-Callkit-Attempt": str(item.attempts + 1),
        }
        try:
            url = URL(item.url).update_query(
                SdkAppid=str(self.sdk_app_id),
                CallbackCommand=item.command,
                contenttype="json",
            )
            async with self._http.post(
                url, data=item.body.encode(), headers=headers, allow_redirects=False
            ) as resp:  # a redirect is an answer to fix, not to follow
                ok = 200 <= resp.status < 300
                error = "" if ok else f"HTTP {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if ok:
            return True
        try:
            self.failures += 1
            delay = backoff(item.attempts, self.base_delay, self.max_delay, self.rng)
            log.info(
                "webhook %s to %s failed (%s); attempt %d, retry in %.1f s",
                item.event_id,
                item.url,
                error,
                item.attempts + 1,
                delay,
            )
            await self.store.failed(item.id, self.clock_ms() + int(delay * 1000), error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease makes it due again later
            log.error("updating webhook %s in the outbox failed: %s", item.event_id, exc)
        return False
