"""Tone bot: answers every call and plays a tone, or a media file, to the caller.

Usage:

    callkit serve --secret-key KEY
    callkit bot tone --secret-key KEY                      # logs in as "tone"; 440 Hz, -20 dBFS
    callkit bot tone --secret-key KEY --freq 660 --level -30
    callkit bot tone --secret-key KEY --file music.mp3 --loop
    callkit phone --user alice --secret-key KEY                      # then: call tone

``python -m callkit.samples.tone_bot ...`` runs the same program. A file starts from the
beginning for each call; its video (if any) is sent in video calls, else a test pattern.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from callkit import CallEngine
from callkit.media import FileSource, TestPatternSource, ToneSource
from callkit.samples.common import (
    AutoAnswer,
    add_login_args,
    login,
    new_parser,
    run,
    run_until_stopped,
)


class ToneBot:
    """Answers ``engine``'s calls and plays a tone, or ``file`` from its start per call."""

    def __init__(
        self,
        engine: CallEngine,
        *,
        freq: float = 440.0,
        level_dbfs: float = -20.0,
        file: str | None = None,
        loop: bool = False,
    ) -> None:
        self.engine = engine
        self.file, self.loop = file, loop
        self.playing: FileSource | None = None
        engine.set_audio_source(ToneSource(freq, level_dbfs))
        engine.set_video_source(TestPatternSource(320, 240, 15))
        self.answer = AutoAnswer(engine, on_begin=self._begin, on_end=self._end)

    def _begin(self, res: dict[str, Any]) -> None:
        if self.file is not None:
            self._end(res)
            self.playing = FileSource(self.file, loop=self.loop)
            if self.playing.audio is not None:
                self.engine.set_audio_source(self.playing.audio)
            if self.playing.video is not None:
                self.engine.set_video_source(self.playing.video)

    def _end(self, res: dict[str, Any]) -> None:
        if self.playing is not None:
            self.playing.close()
            self.playing = None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The tone bot's options."""
    parser = new_parser(prog, __doc__)
    add_login_args(parser, user="tone")
    parser.add_argument("--freq", type=float, default=440.0, help="tone frequency, Hz")
    parser.add_argument("--level", type=float, default=-20.0, help="tone level, dBFS")
    parser.add_argument("--file", help="play this audio/video file instead of a tone")
    parser.add_argument("--loop", action="store_true", help="loop the file")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the tone bot until Ctrl-C."""
    args = build_parser(prog).parse_args(argv)
    if args.file is not None:
        FileSource(args.file).close()  # fail now, not at the first call, if it is unreadable

    async def go() -> int:
        engine = await login(args)
        ToneBot(engine, freq=args.freq, level_dbfs=args.level, file=args.file, loop=args.loop)
        what = args.file or f"{args.freq:g} Hz at {args.level:g} dBFS"
        print(f"tone bot {args.user!r} online at {args.url}, playing {what}; call it", flush=True)
        return await run_until_stopped(engine)

    return run(go())


if __name__ == "__main__":
    sys.exit(main())
