"""TUICallKit habits a porting user relies on: multi-device after init, CallParams errors."""

from __future__ import annotations

import math

import pytest

from callkit import CallError, CallMediaType, CallParams
from callkit.testing import EngineFactory, EventRecorder


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": True},
        {"timeout": "30"},
        {"timeout": 3601},
        {"user_data": 5},
        {"user_data": None},
    ],
)
def test_invalid_call_params_raise_call_error_1202(kwargs: dict[str, object]) -> None:
    with pytest.raises(CallError) as err:
        CallParams(**kwargs)  # type: ignore[arg-type]
    assert err.value.code == -1202
    assert repr(next(iter(kwargs.values()))) in err.value.message


async def test_both_devices_ring_when_enabled_after_init(callkit_engine: EngineFactory) -> None:
    server = callkit_engine.server
    alice = await callkit_engine("alice")
    phone = await callkit_engine("bob")
    await phone.enable_multi_device_ability(True)  # after init: the service is told
    laptop_engine = type(phone)(server.url, ice_addresses=["127.0.0.1"])
    await laptop_engine.enable_multi_device_ability(True)  # before init, as before
    rl = EventRecorder(laptop_engine, "bob")
    try:
        await laptop_engine.init(server.sdk_app_id, "bob", callkit_engine.sig("bob"))
        rp = callkit_engine.recorder(phone)
        assert rp.of("onKickedOffline") == []
        await alice.call("bob", CallMediaType.AUDIO)
        await rp.wait_for("onCallReceived")
        await rl.wait_for("onCallReceived")  # both devices ring
        await laptop_engine.accept()
        cancelled = await rp.wait_for("onCallCancelled")
        assert cancelled["userId"] == "bob" and cancelled["reason"] == 7  # other device accepted
        # turning it off again: a later multi-device login no longer coexists with the phone
        await alice.hangup()
        await phone.enable_multi_device_ability(False)
        third = type(phone)(server.url, ice_addresses=["127.0.0.1"])
        await third.enable_multi_device_ability(True)
        await third.init(server.sdk_app_id, "bob", callkit_engine.sig("bob"))
        await rp.wait_for("onKickedOffline")
        await third.destroy()
    finally:
        await laptop_engine.destroy()


async def test_multi_device_refuses_non_bool(callkit_engine: EngineFactory) -> None:
    alice = await callkit_engine("alice")
    with pytest.raises(CallError) as err:
        await alice.enable_multi_device_ability("yes")  # type: ignore[arg-type]
    assert err.value.code == -1202
