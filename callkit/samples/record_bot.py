"""Record bot: answers every call and records each participant to files.

Usage:

    callkit serve --secret-key KEY
    callkit bot record --secret-key KEY --out recordings/     # logs in as "recorder"
    callkit phone --user alice --secret-key KEY          # then: call recorder

``python -m callkit.samples.record_bot ...`` runs the same program. Every call gives
``<out>/<time>-<n>-<user>.wav`` (48 kHz mono) per participant, and ``.mkv`` (VP8) for video;
files are finalised when the call ends.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from callkit import CallEngine
from callkit.media import RecordedFiles, RecorderSink
from callkit.samples.common import (
    AutoAnswer,
    add_login_args,
    login,
    new_parser,
    run,
    run_until_stopped,
)


class RecordBot:
    """Answers ``engine``'s calls and records every remote participant into ``directory``."""

    def __init__(
        self, engine: CallEngine, directory: str | Path, *, video: bool = True, say: Any = print
    ) -> None:
        self.engine = engine
        self.directory = Path(directory)
        self.video = video
        self.recorder: RecorderSink | None = None
        self.recordings: list[dict[str, RecordedFiles]] = []
        """Files of every finished call, in order."""
        self._say = say
        self._users: list[str] = []
        self.answer = AutoAnswer(engine, on_user=self._record, on_end=self.finish, say=say)

    def _record(self, user: str) -> None:
        if self.recorder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            prefix = f"{stamp}-{len(self.recordings) + 1}-"  # unique per call
            self.recorder = RecorderSink(self.directory, prefix=prefix, video=self.video)
        self.engine.add_audio_tap(user, self.recorder.audio_tap(user))
        self.engine.add_video_tap(user, self.recorder.video_tap(user))
        self._users.append(user)

    async def finish(self, res: dict[str, Any] | None = None) -> None:
        """Close the current recording (at the end of each call, and on exit)."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        for user in self._users:
            self.engine.remove_audio_tap(user, recorder.audio_tap(user))
            self.engine.remove_video_tap(user, recorder.video_tap(user))
        self._users.clear()
        files = await recorder.close()  # flushes and finalises, off the event loop
        self.recordings.append(files)
        for user, rec in files.items():
            paths = ", ".join(str(p) for p in (rec.audio, rec.video) if p is not None)
            self._say(
                f"recorded {user}: {rec.audio_seconds:.1f} s audio, "
                f"{rec.video_frames} video frames -> {paths}"
            )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The record bot's options."""
    parser = new_parser(prog, __doc__)
    add_login_args(parser, user="recorder")
    parser.add_argument("--out", default="recordings", help="directory for the recordings")
    parser.add_argument("--no-video", action="store_true", help="record audio only")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the record bot until Ctrl-C."""
    args = build_parser(prog).parse_args(argv)

    async def go() -> int:
        engine = await login(args)
        bot = RecordBot(engine, args.out, video=not args.no_video)
        print(f"record bot {args.user!r} online at {args.url}, writing to {args.out}/", flush=True)
        try:
            return await run_until_stopped(engine)
        finally:
            await bot.finish()

    return run(go())


if __name__ == "__main__":
    sys.exit(main())
