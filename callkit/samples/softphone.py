"""A terminal softphone: log in, then call, answer and talk with commands.

Usage:

    callkit serve --secret-key KEY                         # once, somewhere
    python -m callkit.samples.softphone --user alice --secret-key KEY
    callkit phone --user alice --secret-key KEY            # the same program

Commands (type them and press Enter):

    call USER [video]            place a 1v1 call (audio unless "video")
    group USER USER... [video]   place a group call (up to 8 users)
    accept | reject              answer or refuse a ringing call
    hangup                       cancel, leave or end the call
    mute | unmute                close / open the microphone
    camera on | camera off       open / close the camera (video calls)
    devices                      list audio devices and cameras
    status                       print the status line now
    help | quit

It uses the microphone, speaker and camera when they are there, and otherwise a 440 Hz
tone, no playback and a test pattern (``--tone``, ``--no-speaker``, ``--pattern`` force
those); ``--file`` sends an audio file (looped) instead. A status line shows the call
ringing (out or in, with the seconds so far) and, in a call, a volume bar and the network
quality of every participant. In a terminal it is the top line, updated in place, so it
never garbles what you type; when the output is a pipe or a file it is printed as a line
every ``--meters`` seconds instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

if not __package__:  # run as a file: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from callkit import CallEngine, CallError, CallMediaType, ErrorCode, NetworkQuality
from callkit.media import (
    AudioSource,
    CameraSource,
    FileAudioSource,
    MicrophoneSource,
    SpeakerSink,
    TestPatternSource,
    ToneSource,
    VideoSource,
    list_audio_devices,
    list_cameras,
)
from callkit.samples.common import add_login_args, login, new_parser, run

HELP = __doc__[__doc__.index("Commands") : __doc__.index("It uses")].rstrip()
#: what a known command needs, for a command typed with the wrong arguments
USAGE = {
    "call": "call USER [video]",
    "group": "group USER USER... [video]",
    "camera": "camera on | camera off",
}


def volume_bar(volume: int, width: int = 10) -> str:
    """``########--`` for volume 80 of 100."""
    full = round(max(0, min(100, volume)) * width / 100)
    return "#" * full + "-" * (width - full)


class StatusLine:
    """One line of status: in a terminal the top row, redrawn in place (the rows below
    scroll, the cursor and what the user is typing stay where they are); elsewhere printed
    as a line each time."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._reserved = False

    def show(self, text: str) -> None:
        """Show ``text`` as the status."""
        if not self.tty:
            print(text, file=self.out, flush=True)
            return
        import shutil

        cols, rows = shutil.get_terminal_size()
        if not self._reserved:  # keep row 1 for the status: scroll only rows 2..rows
            self.out.write(f"\0337\033[2;{rows}r\0338")
            self._reserved = True
        # save the cursor, draw on row 1, restore: the input line is untouched
        self.out.write(f"\0337\033[1;1H\033[2K{text[: cols - 1]}\0338")
        self.out.flush()

    def clear(self) -> None:
        """Empty the status (terminal only)."""
        if self.tty and self._reserved:
            self.out.write("\0337\033[1;1H\033[2K\0338")
            self.out.flush()

    def close(self) -> None:
        """Give the terminal its whole height back."""
        if self.tty and self._reserved:
            self.clear()
            self.out.write("\0337\033[r\0338")
            self.out.flush()
            self._reserved = False


class Softphone:
    """The phone's state and commands around one logged-in engine.

    ``await phone.command(line)`` runs one command (False means quit); ``await
    phone.run(lines)`` runs a whole session. Output goes to ``out``, one line at a time.
    """

    def __init__(
        self,
        engine: CallEngine,
        *,
        out: TextIO = sys.stdout,
        speaker: SpeakerSink | None = None,
        camera: str | None = "auto",
        meter_interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.out = out
        self.speaker = speaker
        self.camera_device = camera  # "auto", a device, or None for the test pattern
        self.camera: VideoSource | None = None
        self.meter_interval = meter_interval
        self.in_call = False
        self.users: list[str] = []  # remote participants of the current call
        self.volumes: dict[str, int] = {}
        self.quality: dict[str, int] = {}
        self.status = StatusLine(out)
        #: what rings ("calling bob" / "call from alice") and since when (loop time)
        self.ringing: tuple[str, float] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        for name in (
            "onCallReceived",
            "onCallBegin",
            "onCallEnd",
            "onCallCancelled",
            "onUserJoin",
            "onUserLeave",
            "onUserReject",
            "onUserNoResponse",
            "onUserLineBusy",
            "onUserAudioAvailable",
            "onUserVideoAvailable",
            "onCallMediaTypeChanged",
            "onError",
            "onKickedOffline",
            "onUserSigExpired",
            "onUserVoiceVolumeChanged",
            "onUserNetworkQualityChanged",
        ):
            engine.add_event_listener(name, self._listener(name))

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- events ------------------------------------------------------------------------------
    def _listener(self, name: str) -> Any:
        def on_event(res: dict[str, Any]) -> None:
            self._on_event(name, res)

        return on_event

    def _on_event(self, name: str, res: dict[str, Any]) -> None:
        if name == "onUserVoiceVolumeChanged":
            self.volumes.update(res["volumeMap"])
        elif name == "onUserNetworkQualityChanged":
            self.quality.update({e["userId"]: e["quality"] for e in res["networkQualityList"]})
        elif name == "onCallReceived":
            kind = CallMediaType(res["callMediaType"]).name.lower()
            others = [u for u in res["calleeIdList"] if u != self.engine.user_id]
            group = f" (group with {', '.join(others)})" if others else ""
            self.say(
                f"<< incoming {kind} call from {res['callerId']}{group}: type accept or reject"
            )
            self._ring(f"call from {res['callerId']}{group}: accept or reject?")
            self._add_user(res["callerId"])
            if res["callMediaType"] == CallMediaType.VIDEO:
                task = asyncio.ensure_future(self._open_camera())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif name == "onCallBegin":
            self.in_call = True
            self.ringing = None
            kind = CallMediaType(res["callMediaType"]).name.lower()
            self.say(f"== {kind} call connected (room {res['roomID']})")
        elif name == "onUserJoin":
            self._add_user(res["userId"])
            self.say(f"== {res['userId']} joined")
        elif name == "onUserLeave":
            self._remove_user(res["userId"])
            self.say(f"== {res['userId']} left")
        elif name in ("onUserReject", "onUserNoResponse", "onUserLineBusy"):
            what = {
                "onUserReject": "rejected the call",
                "onUserNoResponse": "did not answer",
                "onUserLineBusy": "is busy",
            }[name]
            self.say(f"== {res['userId']} {what}")
        elif name in ("onCallEnd", "onCallCancelled"):
            self.say(
                f"== call ended after {res['totalTime']} s"
                if name == "onCallEnd"
                else "== call cancelled"
            )
            self._end_call()
        elif name == "onUserAudioAvailable":
            self.say(f"== {res['userId']} {'unmuted' if res['isAudioAvailable'] else 'muted'}")
        elif name == "onUserVideoAvailable":
            state = "on" if res["isVideoAvailable"] else "off"
            self.say(f"== {res['userId']} turned the camera {state}")
        elif name == "onCallMediaTypeChanged":
            self.say(f"== now a {CallMediaType(res['newCallMediaType']).name.lower()} call")
        elif name == "onError":
            self.say(f"!! error {res['code']}: {res['msg']}")
        elif name in ("onKickedOffline", "onUserSigExpired"):
            self.say(
                "!! logged out: "
                + ("logged in elsewhere" if name == "onKickedOffline" else "UserSig expired")
            )
            self._end_call()

    def _add_user(self, user: str) -> None:
        if user != self.engine.user_id and user not in self.users:
            self.users.append(user)
            if self.speaker is not None:
                self.engine.add_audio_tap(user, self.speaker.tap(user))

    def _remove_user(self, user: str) -> None:
        if user in self.users:
            self.users.remove(user)
        if self.speaker is not None:
            self.engine.remove_audio_tap(user, self.speaker.tap(user))
            self.speaker.remove_input(user)
        self.volumes.pop(user, None)
        self.quality.pop(user, None)

    def _ring(self, what: str) -> None:
        self.ringing = (what, asyncio.get_running_loop().time())
        self.status.show(self.status_line())

    def _end_call(self) -> None:
        self.in_call = False
        self.ringing = None
        self.status.clear()
        for user in list(self.users):
            self._remove_user(user)
        self.volumes.clear()
        self.quality.clear()
        self._close_camera()

    # -- devices -----------------------------------------------------------------------------
    async def _open_camera(self) -> None:
        if self.camera is not None:
            return
        source: VideoSource | None = None
        if self.camera_device is not None:
            device = None if self.camera_device == "auto" else self.camera_device
            try:  # opening a camera may block for a moment: not on the event loop
                source = await asyncio.to_thread(CameraSource, device, width=640, height=480)
            except CallError as exc:
                self.say(f"-- {exc.message}; sending a test pattern")
        self.camera = source or TestPatternSource(320, 240, 15)
        self.engine.set_video_source(self.camera)

    def _close_camera(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None

    # -- meters ------------------------------------------------------------------------------
    def meter_line(self) -> str:
        """Every participant's volume bar and network quality, the local user first."""
        me = str(self.engine.user_id)
        parts = []
        for user in [me, *self.users]:
            vol = self.volumes.get(user, 0)
            q = NetworkQuality(self.quality.get(user, 0)).name
            label = f"{user}(me)" if user == me else user
            parts.append(f"{label} {volume_bar(vol)} {vol:3d} {q}")
        return "   " + " | ".join(parts)

    def status_line(self) -> str:
        """The meters in a call, what rings while ringing, else who is logged in."""
        if self.in_call:
            return self.meter_line()
        if self.ringing is not None:
            what, since = self.ringing
            seconds = asyncio.get_running_loop().time() - since
            return f"   ringing: {what} ({seconds:.0f} s)"
        return f"   idle, logged in as {self.engine.user_id}"

    async def _meters(self) -> None:
        while True:
            await asyncio.sleep(self.meter_interval)
            if self.in_call or self.ringing is not None:
                self.status.show(self.status_line())

    # -- commands ----------------------------------------------------------------------------
    async def command(self, line: str) -> bool:
        """Run one command line; returns False to quit. Errors are printed, not raised."""
        words = line.split()
        if not words:
            return True
        cmd, rest = words[0].lower(), words[1:]
        try:
            return await self._command(cmd, rest)
        except CallError as exc:
            self.say(f"!! {cmd}: {exc.message} (code {exc.code})")
        return True

    async def _command(self, cmd: str, rest: list[str]) -> bool:
        e = self.engine
        users = [u for word in rest for u in word.split(",") if u]
        media = CallMediaType.AUDIO
        if users and users[-1].lower() in ("audio", "video"):
            media = CallMediaType[users.pop().upper()]
        video = media is CallMediaType.VIDEO
        if cmd == "call" and len(users) == 1:
            if video:
                await self._open_camera()
            self.say(f">> calling {users[0]} ({media.name.lower()})")
            self._ring(f"calling {users[0]}")
            try:
                await e.call(users[0], media)
            except CallError:
                self.ringing = None
                raise
        elif cmd == "group" and users:
            if video:
                await self._open_camera()
            self.say(f">> calling {', '.join(users)} ({media.name.lower()} group call)")
            self._ring(f"calling {', '.join(users)}")
            try:
                await e.group_call(users, f"group-{e.user_id}", media)
            except CallError:
                self.ringing = None
                raise
        elif cmd == "accept":
            await e.accept()
        elif cmd == "reject":
            await e.reject()
        elif cmd in ("hangup", "bye"):
            await e.hangup()
        elif cmd == "mute":
            await e.close_microphone()
            self.say(">> microphone off")
        elif cmd == "unmute":
            await e.open_microphone()
            self.say(">> microphone on")
        elif cmd == "camera" and rest and rest[0].lower() in ("on", "off"):
            if rest[0].lower() == "on":
                await self._open_camera()
                await e.open_camera()
            else:
                await e.close_camera()
            self.say(f">> camera {rest[0].lower()}")
        elif cmd == "devices":
            self._list_devices()
        elif cmd == "status":
            self.say(self.status_line())
        elif cmd in ("quit", "exit"):
            return False
        elif cmd == "help":
            self.say(HELP)
        elif cmd in USAGE:
            self.say(f"?? usage: {USAGE[cmd]}")
        else:
            self.say(f"?? unknown command {cmd!r}: type help for the list of commands")
        return True

    def _list_devices(self) -> None:
        try:
            audio = list_audio_devices()
            if not audio:
                self.say("-- no audio devices")
            for d in audio:
                kinds = [
                    k
                    for k, n in (("in", d.max_input_channels), ("out", d.max_output_channels))
                    if n
                ]
                mark = "*" if d.is_default_input or d.is_default_output else " "
                self.say(f"{mark} audio {d.index:2d}: {d.name} [{'/'.join(kinds)}, {d.host_api}]")
        except CallError as exc:
            self.say(f"-- no audio devices: {exc.message}")
        cams = list_cameras()
        for c in cams:
            self.say(f"  camera {c.device}: {c.name}")
        if not cams:
            self.say("-- no cameras listed")

    async def run(self, lines: AsyncIterator[str]) -> None:
        """Run commands until ``quit`` or the end of input, then hang up."""
        meters = asyncio.create_task(self._meters())
        try:
            async for line in lines:
                if not await self.command(line):
                    break
        finally:
            meters.cancel()
            self.status.close()
            if self.engine.call_state.value != "idle":
                with contextlib.suppress(CallError):
                    await self.engine.hangup()
            self._close_camera()


async def stdin_lines() -> AsyncIterator[str]:
    """Lines typed on stdin, read by a daemon thread (portable; never blocks the loop)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def open_audio(args: argparse.Namespace, say: Any) -> tuple[AudioSource, SpeakerSink | None]:
    """The microphone (else a tone) and the speaker (else none), as asked and available."""
    source: AudioSource | None = None
    path = getattr(args, "file", None)  # (callers may pass a namespace without it)
    if path:
        try:
            source = FileAudioSource(path, loop=True)
        except Exception as exc:  # missing, no audio stream, not a media file
            raise CallError(ErrorCode.PARAM_INVALID, f"cannot send {path}: {exc}") from None
        return source, _speaker(args, say)
    if not args.tone:
        try:
            source = MicrophoneSource(args.mic)
        except CallError as exc:
            say(f"-- {exc.message}; sending a 440 Hz tone instead of the microphone")
    return source or ToneSource(440.0, -20.0), _speaker(args, say)


def _speaker(args: argparse.Namespace, say: Any) -> SpeakerSink | None:
    if args.no_speaker:
        return None
    try:
        return SpeakerSink(args.speaker)
    except CallError as exc:
        say(f"-- {exc.message}; not playing what arrives")
        return None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The softphone's options."""
    parser = new_parser(prog, __doc__, epilog=HELP)
    add_login_args(parser, user="alice")
    parser.add_argument("--mic", help="microphone: PortAudio index or part of its name")
    parser.add_argument("--speaker", help="speaker: PortAudio index or part of its name")
    parser.add_argument("--camera", help="camera device (none given: the first one)")
    parser.add_argument("--tone", action="store_true", help="send a tone, not the microphone")
    parser.add_argument(
        "--file", metavar="PATH", help="send this audio file (looped), not the microphone"
    )
    parser.add_argument("--no-speaker", action="store_true", help="do not play received audio")
    parser.add_argument(
        "--pattern", action="store_true", help="send a test pattern, not the camera"
    )
    parser.add_argument(
        "--meters",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="refresh the volume and quality status this often in a call",
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the softphone on stdin/stdout until ``quit`` or end of input."""
    args = build_parser(prog).parse_args(argv)
    if args.mic is not None and args.mic.isdigit():
        args.mic = int(args.mic)
    if args.speaker is not None and args.speaker.isdigit():
        args.speaker = int(args.speaker)

    def say(text: str) -> None:
        print(text, flush=True)

    async def go() -> int:
        audio, speaker = open_audio(args, say)
        try:
            engine = await login(args, audio_source=audio)
            phone = Softphone(
                engine,
                speaker=speaker,
                meter_interval=args.meters,
                camera=None if args.pattern else args.camera or "auto",
            )
            say(f"logged in as {args.user} at {args.url}; type help for commands")
            try:
                await phone.run(stdin_lines())
            finally:
                await engine.destroy()
        finally:
            audio.close()
            if speaker is not None:
                speaker.close()
        say("bye")
        return 0

    return run(go())


if __name__ == "__main__":
    sys.exit(main())
