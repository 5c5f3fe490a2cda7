"""What the benchmarks share. Each ``bench_*.py`` runs as a script (``python bench/x.py``)
and puts the checkout on ``sys.path`` first, so it imports this as ``bench._common``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["SETUP_TIMEOUT", "until"]

#: seconds a benchmark's set-up (calls connecting, media flowing) may take
SETUP_TIMEOUT = 60.0


async def until(check: Callable[[], bool], what: str, timeout: float = SETUP_TIMEOUT) -> None:
    """Poll ``check`` every 0.1 s; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        await asyncio.sleep(0.1)
