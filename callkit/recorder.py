"""EventRecorder: records every event of an engine and waits for them (tests, demos, bots)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .events import EVENT_NAMES


@dataclass(frozen=True)
class Recorded:
    """One event as a listener saw it."""

    at: float
    user_id: str
    event: str
    payload: dict[str, Any]


class EventRecorder:
    """Listens to all 17 events of ``engine`` and keeps them in order."""

    def __init__(
        self,
        engine: Any,
        user_id: str | None = None,
        on_event: Callable[[Recorded], None] | None = None,
    ) -> None:
        self.engine = engine
        self.user_id = user_id or getattr(engine, "user_id", None) or "?"
        self.events: list[Recorded] = []
        self._on_event = on_event
        self._changed = asyncio.Event()
        self._listeners = {name: self._make(name) for name in EVENT_NAMES}
        for name, fn in self._listeners.items():
            engine.add_event_listener(name, fn)

    def _make(self, name: str) -> Callable[[dict[str, Any]], None]:
        def listener(payload: dict[str, Any]) -> None:
            rec = Recorded(time.monotonic(), self.user_id, name, payload)
            self.events.append(rec)
            self._changed.set()
            if self._on_event is not None:
                self._on_event(rec)

        return listener

    def detach(self) -> None:
        """Stop recording."""
        for name, fn in self._listeners.items():
            self.engine.remove_event_listener(name, fn)

    def names(self, *, skip_periodic: bool = True) -> list[str]:
        """Event names in order (volume and quality reports left out by default)."""
        return [e.event for e in self.events if not skip_periodic or e.event not in PERIODIC]

    def sequence(self, *, skip_periodic: bool = True) -> list[tuple[str, dict[str, Any]]]:
        """(event, payload) pairs in order, volume and quality reports left out by default."""
        return [
            (e.event, e.payload)
            for e in self.events
            if not skip_periodic or e.event not in PERIODIC
        ]

    def of(self, event: str) -> list[dict[str, Any]]:
        """Payloads of every ``event`` so far."""
        return [e.payload for e in self.events if e.event == event]

    def clear(self) -> None:
        self.events.clear()

    async def wait_for(
        self,
        event: str,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10.0,
        count: int = 1,
    ) -> dict[str, Any]:
        """Wait until ``count`` matching ``event``s were seen; returns the last one's payload.

        Raises TimeoutError naming what it waited for and what it saw instead.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            hits = [
                e.payload
                for e in self.events
                if e.event == event and (where is None or where(e.payload))
            ]
            if len(hits) >= count:
                return hits[count - 1]
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(
                    f"{self.user_id}: waited {timeout} s for {count} x {event}; saw {self.names()}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


PERIODIC = frozenset({"onUserVoiceVolumeChanged", "onUserNetworkQualityChanged"})
