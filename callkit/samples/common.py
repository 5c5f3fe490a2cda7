"""What every sample shares: login options, auto-answering, running until Ctrl-C.

Only callkit's public API is used here (``callkit``, ``media``, ``signaling`` names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from callkit import CallEngine, CallError
from callkit.signaling import gen_user_sig

DEFAULT_URL = "ws://127.0.0.1:8765/ws"  # where `callkit serve` listens by default
DEFAULT_SDK_APP_ID = 1400000001


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default (unless it is unset or an off flag) and keeps
    the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if shows_default(action) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should show ``action``'s default: it has a value worth showing."""
    return (
        action.default not in (None, False, argparse.SUPPRESS)
        and bool(action.option_strings)
        and action.nargs != 0
    )


def new_parser(
    prog: str | None, doc: str | None, epilog: str | None = None
) -> argparse.ArgumentParser:
    """An argument parser for a sample: first line of ``doc`` as description, defaults shown."""
    return argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").split("\n")[0],
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def add_login_args(parser: argparse.ArgumentParser, user: str) -> None:
    """--url (--server), --ca-file, --sdk-app-id, --user, --secret-key / --usersig and
    --ice-address."""
    parser.add_argument(
        "--url",
        "--server",
        default=DEFAULT_URL,
        help="signaling URL, ws:// or wss://",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="trust this CA for a wss:// server with a private certificate (default: the system's)",
    )
    parser.add_argument(
        "--sdk-app-id",
        type=int,
        default=DEFAULT_SDK_APP_ID,
        help="the application id the server runs with",
    )
    parser.add_argument("--user", default=user, help="user id to log in as")
    auth = parser.add_mutually_exclusive_group(required=True)
    auth.add_argument("--secret-key", help="the server's secret: a UserSig is made from it")
    auth.add_argument("--usersig", help="a UserSig for --user (e.g. from `callkit usersig`)")
    parser.add_argument(
        "--ice-address",
        action="append",
        metavar="ADDR",
        help="use only this local address for media (repeatable; e.g. "
        "127.0.0.1 for calls within one machine)",
    )


async def login(args: argparse.Namespace, **engine_kwargs: Any) -> CallEngine:
    """A CallEngine logged in as ``args.user`` (raises CallError(-1201) if refused)."""
    sig = args.usersig or gen_user_sig(args.sdk_app_id, args.secret_key, args.user)
    if args.ice_address:
        engine_kwargs.setdefault("ice_addresses", args.ice_address)
    if getattr(args, "ca_file", None):
        engine_kwargs.setdefault("tls_ca_file", args.ca_file)
    engine = CallEngine(args.url, **engine_kwargs)
    try:
        await engine.init(args.sdk_app_id, args.user, sig)
    except BaseException:
        await engine.destroy()
        raise
    return engine


class AutoAnswer:
    """Accepts every incoming call and tells who is in it.

    ``on_user(user_id)`` runs once per remote participant and call: for the caller as soon
    as the call rings (so a bot can open its streams before any audio arrives), for everyone
    else when they join. ``on_begin(res)`` / ``on_end(res)`` follow onCallBegin and the end
    of the call (onCallEnd or onCallCancelled). Callbacks may be coroutines.
    """

    def __init__(
        self,
        engine: CallEngine,
        *,
        on_user: Callable[[str], Any] | None = None,
        on_begin: Callable[[dict[str, Any]], Any] | None = None,
        on_end: Callable[[dict[str, Any]], Any] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.engine = engine
        self.users: set[str] = set()
        self.calls_answered = 0
        self._on_user, self._on_begin, self._on_end = on_user, on_begin, on_end
        self._say = say
        engine.add_event_listener("onCallReceived", self._received)
        engine.add_event_listener("onUserJoin", self._joined)
        engine.add_event_listener("onCallBegin", self._begin)
        engine.add_event_listener("onCallEnd", self._ended)
        engine.add_event_listener("onCallCancelled", self._ended)

    async def _received(self, res: dict[str, Any]) -> None:
        self._say(f"call from {res['callerId']} (media type {res['callMediaType']}): accepting")
        await self._user(res["callerId"])
        try:
            await self.engine.accept()
            self.calls_answered += 1
        except CallError as exc:  # cancelled meanwhile, or busy
            self._say(f"could not accept: {exc}")

    async def _joined(self, res: dict[str, Any]) -> None:
        await self._user(res["userId"])

    async def _user(self, user: str) -> None:
        if user not in self.users and user != self.engine.user_id:
            self.users.add(user)
            await _call(self._on_user, user)

    async def _begin(self, res: dict[str, Any]) -> None:
        self._say(f"call {res['roomID']} connected")
        await _call(self._on_begin, res)

    async def _ended(self, res: dict[str, Any]) -> None:
        self.users.clear()
        self._say("call ended")
        await _call(self._on_end, res)


async def _call(fn: Callable[..., Any] | None, *args: Any) -> None:
    if fn is not None:
        result = fn(*args)
        if inspect.isawaitable(result):
            await result


#: exit status of a program whose login ended: displaced by another device, UserSig expired
EXIT_LOGGED_OUT = 3


async def run_until_stopped(engine: CallEngine, stop: asyncio.Event | None = None) -> int:
    """Wait for ``stop`` (or Ctrl-C / SIGTERM), then hang up and log out; returns 0.

    When the login ends under the program (``onKickedOffline``: the same user logged in
    elsewhere; ``onUserSigExpired``) it says so on stderr and returns ``EXIT_LOGGED_OUT``
    instead of running on, deaf.
    """
    stop = stop or asyncio.Event()
    ended: list[str] = []
    user = engine.user_id

    def logged_out(why: str) -> Callable[[dict[str, Any]], None]:
        def listener(res: dict[str, Any]) -> None:
            ended.append(why)
            print(f"{why}; exiting", file=sys.stderr, flush=True)
            stop.set()

        return listener

    engine.add_event_listener(
        "onKickedOffline",
        logged_out(f"displaced: {user!r} logged in on another device (or another bot)"),
    )
    engine.add_event_listener(
        "onUserSigExpired", logged_out(f"the UserSig of {user!r} expired; log in again")
    )
    loop = asyncio.get_running_loop()
    if sys.platform != "win32":
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await engine.destroy()
    return EXIT_LOGGED_OUT if ended else 0


def run(coro: Awaitable[int]) -> int:
    """``asyncio.run`` for a sample's main coroutine; Ctrl-C exits quietly with 130."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 130
    except CallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
