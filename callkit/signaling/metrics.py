"""Prometheus metrics of one signaling server (its own registry, so several servers can
live in one process). Names follow ``callkit_<thing>_<unit>``; ``GET /metrics`` serves them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LoopLagMonitor", "ServerMetrics"]


class ServerMetrics:
    """Every metric the server exports; gauges read live values through callbacks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected_users = Gauge(
            "callkit_connected_users", "Users with at least one open session", registry=r
        )
        self.live_calls = Gauge("callkit_live_calls", "Calls ringing or connected", registry=r)
        self.call_setups = Counter("callkit_call_setups", "Calls started", registry=r)
        self.call_results = Counter(
            "callkit_call_results", "Calls ended, by callResult", ["result"], registry=r
        )
        self.logins = Counter("callkit_logins", "Successful logins", registry=r)
        self.webhook_backlog = Gauge(
            "callkit_webhook_backlog", "Webhook deliveries not yet acknowledged", registry=r
        )
        self.webhook_failures = Counter(
            "callkit_webhook_failures", "Failed webhook delivery attempts", registry=r
        )
        self.webhook_deliveries = Counter(
            "callkit_webhook_deliveries", "Acknowledged webhook deliveries", registry=r
        )
        self.webhook_latency = Histogram(
            "callkit_webhook_delivery_seconds",
            "From the call event to the receiver's acknowledgement",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.record_queue = Gauge(
            "callkit_record_queue", "Record changes waiting to be written", registry=r
        )
        self.record_write_errors = Gauge(
            "callkit_record_write_errors", "Failed record write transactions (retried)", registry=r
        )
        self.loop_lag = Gauge(
            "callkit_event_loop_lag_seconds",
            "How late the event loop ran a timer in the last sample",
            registry=r,
        )

    def bind(self, name: str, fn: Callable[[], float]) -> None:
        """Make gauge ``name`` (an attribute) read ``fn()`` at every scrape."""
        gauge = getattr(self, name)
        gauge.set_function(fn)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class LoopLagMonitor:
    """Sleeps ``interval`` seconds in a loop and records how late it woke up."""

    def __init__(self, gauge: Gauge, interval: float = 0.5) -> None:
        self.gauge = gauge
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling (inside the running loop)."""
        self._task = asyncio.create_task(self._run(), name="callkit-loop-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - start - self.interval)
            self.worst = max(self.worst, lag)
            self.gauge.set(lag)
