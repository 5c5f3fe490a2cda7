"""A test of your own app or bot with callkit's pytest plugin: copy this file into your tests.

The plugin comes with the package (``pip install 'callkit[testing]'`` also brings pytest and
pytest-asyncio); its fixtures need no conftest. Run: ``pytest test_callkit_example.py``.
See docs/testing.md for every fixture and helper.
"""

from __future__ import annotations

import pytest

from callkit import CallMediaType, CallParams
from callkit.media import ToneSource
from callkit.testing import EngineFactory, EventRecorder, FakeClock, wait_hears

# needed in pytest-asyncio's strict mode (its default), harmless in auto mode
pytestmark = pytest.mark.asyncio


async def test_bob_hears_alice(callkit_engine: EngineFactory) -> None:
    alice = await callkit_engine("alice", audio_source=ToneSource(440, level_dbfs=-20))
    bob = await callkit_engine("bob")
    bob_events = EventRecorder(bob)

    await alice.call("bob", CallMediaType.AUDIO)
    await bob_events.wait_for("onCallReceived", lambda res: res["callerId"] == "alice")
    await bob.accept()
    await bob_events.wait_for("onCallBegin", timeout=15)

    # the decoded audio bob receives from alice measures -20 dBFS (volume 80 of 100)
    await wait_hears(bob, "alice", level_dbfs=-20, timeout=15)


async def test_unanswered_call_times_out(
    callkit_engine: EngineFactory, callkit_clock: FakeClock
) -> None:
    alice = await callkit_engine("alice")
    await callkit_engine("bob")  # online, but never answers
    alice_events = EventRecorder(alice)

    await alice.call("bob", CallMediaType.AUDIO, CallParams(timeout=30))
    await callkit_clock.advance(30)  # the 30 s ring timeout, in no wall time

    await alice_events.wait_for("onUserNoResponse", lambda res: res["userId"] == "bob", timeout=5)
    await alice_events.wait_for("onCallCancelled", timeout=5)
