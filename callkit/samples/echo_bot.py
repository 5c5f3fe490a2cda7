"""Echo bot: answers every call and sends each caller's voice straight back.

Usage (three terminals, or `&`):

    callkit serve --secret-key KEY                       # the signaling server
    callkit bot echo --secret-key KEY                    # logs in as "echo"
    callkit phone --user alice --secret-key KEY          # then type: call echo

``python -m callkit.samples.echo_bot ...`` runs the same program. In a group call every
participant's audio is echoed, mixed, to everyone. This is the bot API in both directions:
each caller's audio comes out of ``engine.remote_audio(user)`` as numpy frames and goes back
in through a ``PushAudioSource``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from callkit import CallEngine
from callkit.media import MixSource, PushAudioSource
from callkit.samples.common import (
    AutoAnswer,
    add_login_args,
    login,
    new_parser,
    run,
    run_until_stopped,
)


class EchoBot:
    """Echoes every remote participant of ``engine``'s calls (which it answers)."""

    def __init__(self, engine: CallEngine, *, max_delay: float = 0.2) -> None:
        self.engine = engine
        self.max_delay = max_delay
        self.mix = MixSource()  # one voice per remote participant
        engine.set_audio_source(self.mix)
        self.answer = AutoAnswer(engine, on_user=self._echo)
        self._tasks: set[asyncio.Task[None]] = set()

    def _echo(self, user: str) -> None:
        voice = PushAudioSource(max_queue_seconds=self.max_delay)  # bounded latency
        self.mix.add(voice)
        stream = self.engine.remote_audio(user)  # opened now: nothing is missed
        task = asyncio.create_task(self._relay(stream, voice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, stream: AsyncIterator[Any], voice: PushAudioSource) -> None:
        try:
            async for samples in stream:  # int16 (n, 1) numpy arrays at 48 kHz
                voice.write(samples)
        finally:  # the user left or the call ended
            self.mix.remove(voice)

    async def close(self) -> None:
        """Stop echoing (the engine is the caller's to destroy)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The echo bot's options."""
    parser = new_parser(prog, __doc__)
    add_login_args(parser, user="echo")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the echo bot until Ctrl-C."""
    args = build_parser(prog).parse_args(argv)

    async def go() -> int:
        engine = await login(args)
        bot = EchoBot(engine)
        print(f"echo bot {args.user!r} online at {args.url}; call it", flush=True)
        try:
            return await run_until_stopped(engine)
        finally:
            await bot.close()

    return run(go())


if __name__ == "__main__":
    sys.exit(main())
