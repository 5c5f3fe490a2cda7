"""CallMeters: the volume loop and the network-quality loop of one call.

Both read the peer connections only through :meth:`PeerMesh.peer
<callkit.media.mesh.PeerMesh.peer>` and :class:`~callkit.media.peer.PeerSession` methods
(:meth:`~callkit.media.peer.PeerSession.take_volume`,
:meth:`~callkit.media.peer.PeerSession.quality_sample`), so they work the same over any
topology that hands out sessions. What they measure goes to two callbacks; the engine turns
them into ``onUserVoiceVolumeChanged`` and ``onUserNetworkQualityChanged``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .mesh import PeerMesh
from .qualitymonitor import QualityMonitor

__all__ = ["CallMeters"]

log = logging.getLogger(__name__)

#: ``on_volumes({user: 0..100})``, the local user included
VolumeReport = Callable[[dict[str, int]], None]
#: ``on_quality(local level, {remote user: level})``
QualityReport = Callable[[int, dict[str, int]], None]


class CallMeters:
    """Volume every ``volume_interval`` s, quality every ``quality_interval`` s (and at once
    when someone goes DOWN or comes back), while started."""

    def __init__(self, *, volume_interval: float = 0.3, quality_interval: float = 2.0) -> None:
        if volume_interval < 0.1:
            raise ValueError(f"volume_interval must be >= 0.1 s, got {volume_interval!r}")
        self.volume_interval = volume_interval
        self.quality = QualityMonitor(interval=quality_interval)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return bool(self._tasks)

    def start(
        self,
        mesh: PeerMesh,
        *,
        self_id: str,
        others: Callable[[], list[str]],
        on_volumes: VolumeReport,
        on_quality: QualityReport,
    ) -> None:
        """Meter a call: ``others()`` lists the remote members to report (joined users)."""
        self.stop()
        loop = asyncio.get_running_loop()
        for coro in (
            self._volume_loop(mesh, self_id, others, on_volumes),
            self._quality_loop(mesh, others, on_quality),
        ):
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def stop(self) -> None:
        """Stop both loops (the call ended); idempotent."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def forget(self, user: str) -> None:
        """Drop what the quality monitor knew of ``user`` (they left)."""
        self.quality.forget(user)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("meter loop failed", exc_info=task.exception())

    async def _volume_loop(
        self,
        mesh: PeerMesh,
        self_id: str,
        others: Callable[[], list[str]],
        report: VolumeReport,
    ) -> None:
        mesh.local_audio.take_volume()
        while True:  # ends by cancellation
            await asyncio.sleep(self.volume_interval)
            volumes = {self_id: mesh.local_audio.take_volume()}
            for user in others():
                session = mesh.peer(user)
                volumes[user] = session.take_volume() if session is not None else 0
            report(volumes)

    async def _quality_loop(
        self, mesh: PeerMesh, others: Callable[[], list[str]], report: QualityReport
    ) -> None:
        # samples every monitor.tick (0.5 s); reports every quality_interval, and at once
        # when someone goes DOWN or comes back (media/qualitymonitor.py)
        loop = asyncio.get_running_loop()
        monitor = self.quality
        monitor.start(loop.time())
        while True:  # ends by cancellation
            await asyncio.sleep(monitor.sleep_time(loop.time()))
            result = await monitor.step(others(), mesh.peers, loop.time())
            if result is not None:
                report(*result)
