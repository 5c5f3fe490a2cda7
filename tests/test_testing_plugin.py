"""callkit.testing, the pytest plugin users get: run as a user would, in strict and auto mode."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path

import pytest

import callkit.samples
from callkit.testing import EngineFactory, FakeClock, volume_of

SAMPLE = Path(callkit.samples.__file__).with_name("test_callkit_example.py")


def test_entry_point_registers_the_plugin() -> None:
    eps = importlib.metadata.entry_points(group="pytest11")
    assert "callkit.testing" in {ep.name for ep in eps}, "reinstall: pip install -e ."
    (ep,) = [ep for ep in eps if ep.name == "callkit.testing"]
    assert ep.value == "callkit.testing"


def test_sample_test_passes_under_both_asyncio_modes(pytester: pytest.Pytester) -> None:
    """The user's sample test in a pytest of its own per asyncio mode (both at once)."""
    pytester.makepyfile(test_user=SAMPLE.read_text())
    started = time.monotonic()
    runs = {
        mode: pytester.popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-o",
                f"asyncio_mode={mode}",
                "-v",
                f"--basetemp={pytester.path / f'temp-{mode}'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for mode in ("strict", "auto")
    }
    try:
        for mode, proc in runs.items():
            out, err = proc.communicate(timeout=90)
            text = out.decode() + err.decode()
            assert proc.returncode == 0 and "2 passed" in text, (mode, text[-3000:])
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # the 30 s ring timeout ran on the fake clock: the whole run takes far less than 30 s
    assert time.monotonic() - started < 25


def test_server_options_and_fake_clock_fixture_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest
        from callkit import CallMediaType, CallParams
        from callkit.signaling import ServerConfig
        from callkit.testing import EventRecorder

        pytestmark = pytest.mark.asyncio

        @pytest.fixture
        def callkit_server_options():
            return {"config": ServerConfig(heartbeat=1.0)}

        async def test_options(callkit_server, callkit_clock):
            assert callkit_server.config.heartbeat == 1.0
            assert callkit_server.clock is callkit_clock

        async def test_no_clock_unless_asked(callkit_server):
            assert callkit_server.clock is None

        async def test_timeout_of_one_invitee_only(callkit_engine, callkit_clock):
            alice = await callkit_engine("alice")
            await callkit_engine("bob")
            rec = EventRecorder(alice)
            await alice.call("bob", CallMediaType.AUDIO, CallParams(timeout=30))
            await callkit_clock.advance(29)
            assert rec.names() == []
            await callkit_clock.advance(1)
            await rec.wait_for("onUserNoResponse", timeout=5)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=strict")
    result.assert_outcomes(passed=3)


def test_fake_clock_refuses_going_back() -> None:
    clock = FakeClock(start=5.0)
    assert clock() == 5.0
    for bad in (-1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="seconds must be"):
            asyncio.run(clock.advance(bad))  # type: ignore[arg-type]
    assert clock() == 5.0


def test_volume_of_matches_the_documented_scale() -> None:
    assert [volume_of(x) for x in (-70, -60, -40, -20, -10, 0)] == [0, 0, 40, 80, 100, 100]


async def test_recorder_of_a_foreign_engine_is_refused(callkit_engine: EngineFactory) -> None:
    from callkit import CallEngine

    stranger = CallEngine("ws://127.0.0.1:9/ws")
    with pytest.raises(ValueError, match="not made by this factory"):
        callkit_engine.recorder(stranger)
    alice = await callkit_engine("alice")
    assert callkit_engine.recorder(alice).engine is alice
    assert alice.user_id == "alice"
