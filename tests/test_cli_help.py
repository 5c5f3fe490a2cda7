"""Every option of every command has help text and shows its default; bots leave when
displaced by another login of their user (onKickedOffline)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import pytest

from callkit.cli import build_parser
from callkit.samples import echo_bot, record_bot, softphone, tone_bot
from callkit.samples.common import HelpFormatter, shows_default
from callkit.signaling import SignalingServer

from .conftest import SDK_APP_ID, SECRET

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    subs = _subparsers(top)
    return {
        "callkit": top,
        "demo": subs["demo"],
        "usersig": subs["usersig"],
        "serve": subs["serve"],
        "bot": subs["bot"],
        "phone": softphone.build_parser("callkit phone"),
        "bot echo": echo_bot.build_parser("callkit bot echo"),
        "bot tone": tone_bot.build_parser("callkit bot tone"),
        "bot record": record_bot.build_parser("callkit bot record"),
    }


@pytest.mark.parametrize("name", list(_parsers()))
def test_every_option_has_help_and_its_default(name: str) -> None:
    parser = _parsers()[name]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if name == "phone" and action.dest == "args":
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name}: {label} has no help text"
        if shows_default(action) and name != "serve":  # serve: CLI > env > file, its own text
            shown = HelpFormatter("x")._get_help_string(action)
            assert "%(default)" in shown or str(action.default) in shown, (name, label)
            assert f"default: {action.default}" in " ".join(text.split()), (name, label)


async def _run_bot(url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callkit.cli",
        "bot",
        "echo",
        "--url",
        url,
        "--secret-key",
        SECRET,
        "--sdk-app-id",
        str(SDK_APP_ID),
        "--ice-address",
        "127.0.0.1",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_displaced_bot_exits_with_a_message(server: SignalingServer) -> None:
    assert server.url is not None
    first = await _run_bot(server.url)
    second = None
    try:
        assert first.stdout is not None
        line = await asyncio.wait_for(first.stdout.readline(), 30)
        assert b"echo bot 'echo' online" in line, line
        second = await _run_bot(server.url)  # the same user logs in again
        assert second.stdout is not None
        line = await asyncio.wait_for(second.stdout.readline(), 30)
        assert b"online" in line, line
        code = await asyncio.wait_for(first.wait(), 20)  # the first one leaves, not deaf
        assert first.stderr is not None
        err = (await first.stderr.read()).decode()
        assert code == 3, err
        assert "displaced: 'echo' logged in on another device" in err and "exiting" in err
        assert second.returncode is None  # the new one stays
        assert server.online_users() == ["echo"]
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 20)
