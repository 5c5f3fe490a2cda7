"""TUICallKit's 17 event names, their payload keys, and the listener registry.

Every listener gets one ``dict`` whose keys are exactly the reference page's ``res.*`` fields
(see docs/events.md). Listeners may be plain functions or coroutine functions; a listener that
raises is logged and never breaks the engine.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Literal, get_args

log = logging.getLogger("callkit.events")

EventName = Literal[
    "onError",
    "onCallReceived",
    "onCallCancelled",
    "onCallBegin",
    "onCallEnd",
    "onCallMediaTypeChanged",
    "onUserReject",
    "onUserNoResponse",
    "onUserLineBusy",
    "onUserJoin",
    "onUserLeave",
    "onUserVideoAvailable",
    "onUserAudioAvailable",
    "onUserVoiceVolumeChanged",
    "onUserNetworkQualityChanged",
    "onKickedOffline",
    "onUserSigExpired",
]

EVENT_NAMES: tuple[str, ...] = get_args(EventName)

#: the reference page's payload keys of each event
PAYLOAD_KEYS: dict[str, frozenset[str]] = {
    "onError": frozenset({"code", "msg"}),
    "onCallReceived": frozenset(
        {"callerId", "calleeIdList", "groupId", "callMediaType", "userData"}
    ),
    "onCallCancelled": frozenset({"userId"}),
    "onCallBegin": frozenset({"roomID", "callMediaType", "callRole"}),
    "onCallEnd": frozenset({"roomID", "callMediaType", "callRole", "totalTime"}),
    "onCallMediaTypeChanged": frozenset({"oldCallMediaType", "newCallMediaType"}),
    "onUserReject": frozenset({"userId"}),
    "onUserNoResponse": frozenset({"userId"}),
    "onUserLineBusy": frozenset({"userId"}),
    "onUserJoin": frozenset({"userId"}),
    "onUserLeave": frozenset({"userId"}),
    "onUserVideoAvailable": frozenset({"userId", "isVideoAvailable"}),
    "onUserAudioAvailable": frozenset({"userId", "isAudioAvailable"}),
    "onUserVoiceVolumeChanged": frozenset({"volumeMap"}),
    "onUserNetworkQualityChanged": frozenset({"networkQualityList"}),
    "onKickedOffline": frozenset(),
    "onUserSigExpired": frozenset(),
}

Listener = Callable[[dict[str, Any]], Any]


def _has_handler(logger: logging.Logger) -> bool:
    """Would a record of ``logger`` reach a handler other than a NullHandler?"""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def report_error(
    logger: logging.Logger, msg: str, *args: Any, exc: BaseException | None = None
) -> None:
    """Log at ERROR; where the application configured no logging at all, print the record to
    stderr anyway (``logging.lastResort``, as asyncio's unhandled errors are), so a failure in
    user code is never silent. An application that sets the logger's level above ERROR, or
    adds any handler, decides for itself."""
    if not logger.isEnabledFor(logging.ERROR):
        return
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logger.makeRecord(logger.name, logging.ERROR, "", 0, msg, args, exc_info)
    if _has_handler(logger):
        logger.handle(record)
    elif logging.lastResort is not None:
        logging.lastResort.handle(record)


class EventEmitter:
    """Listener registry; ``emit`` never raises because of a listener."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENT_NAMES}
        self._tasks: set[asyncio.Task[Any]] = set()

    def add(self, event: EventName, fn: Listener) -> None:
        """Register ``fn`` for ``event``; raises ValueError for an unknown event name."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENT_NAMES)}")
        if not callable(fn):
            raise ValueError(f"listener must be callable, got {fn!r}")
        if fn not in self._listeners[event]:
            self._listeners[event].append(fn)

    def remove(self, event: EventName, fn: Listener) -> None:
        """Unregister ``fn``; unknown listeners are ignored."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}")
        if fn in self._listeners[event]:
            self._listeners[event].remove(fn)

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Call every listener of ``event`` with its own copy of ``payload``."""
        for fn in list(self._listeners[event]):
            try:
                result = fn(dict(payload))
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception as exc:
                report_error(
                    log, "listener %r for %s raised; the engine goes on", fn, event, exc=exc
                )

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            report_error(
                log, "listener coroutine %s raised; the engine goes on", task, exc=task.exception()
            )

    async def aclose(self) -> None:
        """Cancel listener coroutines still running."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
