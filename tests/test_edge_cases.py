"""Loopback edge cases of the call lifecycle: races, repeats, strangers, offline users."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallError, CallMediaType, CallParams, CallState
from callkit.media import NetworkConditions

from .conftest import NODES_MODES
from .helpers import connect, quiet, ring

pytestmark = pytest.mark.loopback
#: the signaling edge cases also run against three Redis-backed nodes (users spread)
ALSO_CLUSTER = pytest.mark.parametrize("nodes_mode", NODES_MODES, indirect=True)


@ALSO_CLUSTER
async def test_glare_one_call_survives(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    results = await asyncio.gather(
        alice.call("bob", CallMediaType.AUDIO),
        bob.call("alice", CallMediaType.AUDIO),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, CallError)]
    assert len(errors) == 1 and errors[0].code == -1203, results
    winner, loser = (alice, bob) if results[0] is None else (bob, alice)
    rec_loser = rb if loser is bob else ra
    await rec_loser.wait_for("onCallReceived")
    assert winner.call_state is CallState.CALLING and loser.call_state is CallState.RINGING
    await loser.accept()
    await rec_loser.wait_for("onCallBegin")
    await winner.hangup()
    await rec_loser.wait_for("onCallEnd")


@ALSO_CLUSTER
async def test_accept_racing_cancel_leaves_no_stuck_state(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob")
    accepted, cancelled = await asyncio.gather(bob.accept(), alice.hangup(), return_exceptions=True)
    assert cancelled is None
    if accepted is None:  # accept won: the hangup then ended the connected call
        await rb.wait_for("onCallEnd")
        await ra.wait_for("onCallEnd")
    else:  # cancel won: the accept was refused
        assert isinstance(accepted, CallError) and accepted.code == -1203
        assert rb.names() == ["onCallReceived", "onCallCancelled"]
    await quiet()
    assert alice.call_state is CallState.IDLE and bob.call_state is CallState.IDLE
    await alice.call("bob", CallMediaType.AUDIO)  # and a new call works
    await rb.wait_for("onCallReceived", count=2)


@ALSO_CLUSTER
async def test_accept_racing_the_timeout(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob", params=CallParams(timeout=1.0))
    await asyncio.sleep(0.95)
    try:
        await bob.accept()
    except CallError as exc:  # the timeout won
        assert exc.code == -1203
        await ra.wait_for("onUserNoResponse")
        assert rb.names() == ["onCallReceived", "onCallCancelled"]
    else:  # the accept won: no timeout afterwards
        await ra.wait_for("onCallBegin")
        await asyncio.sleep(1.0)
        assert "onUserNoResponse" not in ra.names()
        await alice.hangup()
    await quiet()
    assert alice.call_state is CallState.IDLE and bob.call_state is CallState.IDLE


@ALSO_CLUSTER
async def test_double_accept_and_accept_after_cancel(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob")
    first, second = await asyncio.gather(bob.accept(), bob.accept(), return_exceptions=True)
    assert first is None and isinstance(second, CallError) and second.code == -1204
    await ra.wait_for("onCallBegin")
    await alice.hangup()
    await rb.wait_for("onCallEnd")
    # over Redis nodes hangup()'s reply can come before alice's own onCallEnd (the event goes
    # through pub/sub): until it does, her engine still holds the call and refuses a new one
    await ra.wait_for("onCallEnd")

    await alice.call("bob", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived", count=2)
    await alice.hangup()
    await rb.wait_for("onCallCancelled")
    with pytest.raises(CallError) as err:
        await bob.accept()
    assert err.value.code == -1203


@ALSO_CLUSTER
async def test_strangers_cannot_touch_a_call(make_engine, server) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    eve, re_ = await make_engine("eve")
    await ring(alice, rb, "bob")
    call_id = alice.call_id
    from callkit.signaling import protocol as p

    for message in (p.Reject, p.Hangup, p.Accept, p.Ignore):
        with pytest.raises(CallError) as err:
            await eve._client.request(message, call_id=call_id)  # a forged request
        assert err.value.code == -1203, message
    for method in (eve.reject, eve.hangup):
        with pytest.raises(CallError) as err:
            await method()
        assert err.value.code == -1203
    await bob.accept()
    await ra.wait_for("onCallBegin")
    assert re_.names() == []
    await alice.hangup()
    await rb.wait_for("onCallEnd")


@ALSO_CLUSTER
async def test_invite_validation(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await connect(alice, ra, bob, rb)
    for ids in (["alice"], ["carol", "carol"], [f"u{i}" for i in range(9)], []):
        with pytest.raises(CallError) as err:
            await alice.invite_user(ids)
        assert err.value.code == -1202, ids
    with pytest.raises(CallError) as err:
        await alice.invite_user(["bob"])  # already in the call
    assert err.value.code == -1202
    with pytest.raises(CallError) as err:  # 2 in the call + 8 more > 9
        await alice.invite_user([f"u{i}" for i in range(8)])
    assert err.value.code == -1202
    await alice.hangup()


async def test_media_that_cannot_connect_is_reported(make_engine) -> None:
    """A peer connection that never connects gives onError -1301 and the 1v1 call ends."""
    # a 2 s watchdog instead of the default 10 s: the same rule, sooner
    alice, ra = await make_engine("alice", network=NetworkConditions(loss=1.0), connect_timeout=2.0)
    bob, rb = await make_engine("bob", connect_timeout=2.0)
    await ring(alice, rb, "bob")
    await bob.accept()
    error = await rb.wait_for("onError", timeout=8)
    assert error["code"] == -1301 and "bob" not in error["msg"]
    await ra.wait_for("onCallEnd", timeout=5)
    await rb.wait_for("onCallEnd", timeout=5)
    assert alice.call_state is CallState.IDLE and bob.call_state is CallState.IDLE
