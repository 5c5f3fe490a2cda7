"""callkit's pytest plugin: an embedded signaling server, logged-in engines, event waits.

Installed with the package and registered through the ``pytest11`` entry point, so a project
that depends on callkit gets these fixtures without a conftest (see docs/testing.md):

``callkit_server``
    a :class:`~callkit.signaling.SignalingServer` on 127.0.0.1 (random port), stopped at
    teardown. Tune it by overriding the ``callkit_server_options`` fixture (a dict of
    ``SignalingServer`` keyword arguments, e.g. ``{"config": ServerConfig(...)}``).
``callkit_clock``
    request it and ``callkit_server`` runs its call and session timers (ring timeouts, resume
    grace, UserSig expiry) on a :class:`FakeClock`:
    ``await callkit_clock.advance(30)`` fires a 30 s ring timeout at once.
``callkit_engine``
    a factory: ``alice = await callkit_engine("alice")`` returns a :class:`~callkit.CallEngine`
    logged in to ``callkit_server`` with loopback ICE; keyword arguments (``audio_source=``,
    ``network=`` ...) pass through; every engine is destroyed at teardown.
    ``callkit_engine.recorder(alice)`` is an :class:`EventRecorder` attached before login.

Helpers for any engine: :class:`EventRecorder` (``await rec.wait_for(event, predicate,
timeout)``) and :func:`wait_hears` ("this engine hears that user at this level").
The async fixtures are pytest-asyncio fixtures, so they work in its strict and auto modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from .engine import CallEngine
from .recorder import EventRecorder, Recorded
from .signaling.server import SignalingServer
from .signaling.usersig import gen_user_sig

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the plugin loads, its async fixtures explain
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "LOOPBACK",
    "SDK_APP_ID",
    "SECRET_KEY",
    "EngineFactory",
    "EventRecorder",
    "FakeClock",
    "Recorded",
    "user_sig",
    "volume_of",
    "wait_hears",
]

#: the application id and secret key the ``callkit_server`` fixture accepts
SDK_APP_ID = 1400000001
SECRET_KEY = "callkit-test-secret-0123456789abcdef"
#: host addresses for ICE: loopback only, so no test waits on other interfaces or STUN
LOOPBACK = ["127.0.0.1"]


def user_sig(user_id: str, expire: int = 3600) -> str:
    """A UserSig for ``user_id`` that the ``callkit_server`` fixture accepts."""
    return gen_user_sig(SDK_APP_ID, SECRET_KEY, user_id, expire)


class FakeClock:
    """A monotonic clock that moves only when told: ``await clock.advance(seconds)``.

    Pass it as ``SignalingServer(..., clock=clock)`` and :meth:`attach` the server, or request
    the ``callkit_clock`` fixture, which does both for ``callkit_server``.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)
        self._servers: list[SignalingServer] = []

    def __call__(self) -> float:
        return self.now

    def attach(self, server: SignalingServer) -> None:
        """Run ``server``'s due timers whenever this clock advances."""
        self._servers.append(server)

    async def advance(self, seconds: float) -> None:
        """Move time forward and fire every timer now due (ring timeouts, the resume grace
        of dropped sockets, UserSig expiry) at once."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self.now += seconds
        for server in self._servers:
            await server.run_timers()


class EngineFactory:
    """``await factory(user_id, **engine_kwargs)``: a logged-in engine (see ``callkit_engine``)."""

    def __init__(self, server: SignalingServer) -> None:
        self.server = server
        self.engines: list[CallEngine] = []
        self._recorders: dict[int, EventRecorder] = {}

    async def __call__(self, user_id: str, **kwargs: Any) -> CallEngine:
        """Create a :class:`CallEngine` (``kwargs`` pass through) and log ``user_id`` in."""
        kwargs.setdefault("ice_addresses", LOOPBACK)
        engine = CallEngine(self.url_for(user_id), **kwargs)
        self.engines.append(engine)
        self._recorders[id(engine)] = EventRecorder(engine, user_id)
        await engine.init(self.server.sdk_app_id, user_id, self.sig(user_id))
        return engine

    def url_for(self, user_id: str) -> str:
        """The server URL ``user_id`` logs in at (a cluster fixture spreads users over nodes)."""
        if self.server.url is None:
            raise RuntimeError("callkit_server is not running")
        return self.server.url

    def sig(self, user_id: str, expire: int = 3600) -> str:
        """A UserSig the server accepts for ``user_id``."""
        return gen_user_sig(self.server.sdk_app_id, self.server.secret_key, user_id, expire)

    def recorder(self, engine: CallEngine) -> EventRecorder:
        """The recorder attached to ``engine`` before it logged in (every event it got)."""
        try:
            return self._recorders[id(engine)]
        except KeyError:
            raise ValueError(f"{engine!r} was not made by this factory") from None

    async def aclose(self) -> None:
        """Destroy every engine made (errors are ignored: teardown must finish)."""
        await asyncio.gather(*(e.destroy() for e in self.engines), return_exceptions=True)


def volume_of(level_dbfs: float) -> int:
    """The ``onUserVoiceVolumeChanged`` volume (0..100) of a tone at ``level_dbfs``."""
    return max(0, min(100, round(2 * (level_dbfs + 60))))


async def wait_hears(
    engine: CallEngine,
    user_id: str,
    level_dbfs: float,
    *,
    tolerance: int = 4,
    reports: int = 3,
    timeout: float = 10.0,
) -> int:
    """Wait until ``engine`` hears ``user_id`` at ``level_dbfs``: the median volume of the last
    ``reports`` volume reports is within ``tolerance`` of :func:`volume_of` (``level_dbfs``).

    Returns that median; raises ``AssertionError`` with the volumes seen after ``timeout`` s.
    """
    want = volume_of(level_dbfs)
    seen: list[int] = []
    changed = asyncio.Event()

    def listener(res: dict[str, Any]) -> None:
        volume = res["volumeMap"].get(user_id)
        if volume is not None:
            seen.append(volume)
            changed.set()

    engine.add_event_listener("onUserVoiceVolumeChanged", listener)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            if len(seen) >= reports:
                median = int(statistics.median(seen[-reports:]))
                if abs(median - want) <= tolerance:
                    return median
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{engine.user_id} did not hear {user_id} at {level_dbfs} dBFS "
                    f"(volume {want} +- {tolerance}) within {timeout} s; "
                    f"volumes heard: {seen[-20:]}"
                )
            changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
    finally:
        engine.remove_event_listener("onUserVoiceVolumeChanged", listener)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def callkit_clock() -> FakeClock:
    """A :class:`FakeClock`; requesting it puts ``callkit_server``'s call timers on it."""
    return FakeClock()


@pytest.fixture
def callkit_server_options() -> dict[str, Any]:
    """Keyword arguments for the ``callkit_server`` fixture's ``SignalingServer`` (override)."""
    return {}


def _async_fixture(fn: Callable[..., Any]) -> Any:
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(fn)

    @pytest.fixture(name=fn.__name__)
    def missing() -> None:
        pytest.fail(
            f"callkit's {fn.__name__} fixture needs pytest-asyncio: "
            "pip install 'callkit[testing]' (or pytest-asyncio)"
        )

    return missing


@_async_fixture
async def callkit_server(
    request: pytest.FixtureRequest, callkit_server_options: dict[str, Any]
) -> AsyncIterator[SignalingServer]:
    """A running :class:`SignalingServer` on 127.0.0.1 (``SDK_APP_ID`` / ``SECRET_KEY``)."""
    options = dict(callkit_server_options)
    clock: FakeClock | None = None
    if "callkit_clock" in request.fixturenames:
        clock = request.getfixturevalue("callkit_clock")
        options.setdefault("clock", clock)
    options.setdefault("sdk_app_id", SDK_APP_ID)
    options.setdefault("secret_key", SECRET_KEY)
    server = SignalingServer(**options)
    if clock is not None:
        clock.attach(server)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@_async_fixture
async def callkit_engine(callkit_server: SignalingServer) -> AsyncIterator[EngineFactory]:
    """``alice = await callkit_engine("alice", audio_source=...)``: logged in, loopback ICE,
    destroyed at teardown."""
    factory = EngineFactory(callkit_server)
    try:
        yield factory
    finally:
        await factory.aclose()
