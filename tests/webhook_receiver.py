"""A real aiohttp webhook receiver for tests and benchmarks: verifies signatures, can fail
the first N deliveries (or all while ``accepting`` is False), and remembers every attempt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from callkit.signaling.records.webhooks import verify

__all__ = ["Attempt", "WebhookReceiver"]


@dataclass
class Attempt:
    """One POST the receiver got."""

    at: float
    event_id: str
    attempt: int
    signed: bool
    status: int
    body: dict[str, Any]
    query: dict[str, str]


@dataclass
class WebhookReceiver:
    secret: str
    fail_first: int = 0
    accepting: bool = True
    #: seconds to wait before answering (a slow receiver)
    delay: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        signed = verify(self.secret, request.headers, raw)
        if self.delay:
            await asyncio.sleep(self.delay)
        failing = self.fail_first > 0 or not self.accepting or not signed
        if self.fail_first > 0:
            self.fail_first -= 1
        status = 503 if failing else 200
        self.attempts.append(
            Attempt(
                at=time.time(),
                event_id=request.headers.get("Idempotency-Key", ""),
                attempt=int(request.headers.get("X-Callkit-Attempt", "0")),
                signed=signed,
                status=status,
                body=json.loads(raw),
                query=dict(request.query),
            )
        )
        self._changed.set()
        return web.Response(status=status)

    def delivered(self) -> dict[str, dict[str, Any]]:
        """Acknowledged events by event id (duplicates collapse, as a receiver should)."""
        return {a.event_id: a.body for a in self.attempts if a.status == 200}

    async def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "") -> None:
        """Wait until ``predicate(self)`` is true; fails loudly on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(
                    f"webhook receiver: timed out waiting for {what or predicate}; got "
                    f"{[(a.event_id, a.status) for a in self.attempts]}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
