"""Devices: real PortAudio (ALSA file/null devices), its absence, PyAV cameras, PCM plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from callkit import CallError
from callkit.media import CameraSource, DeviceError, ToneSource, list_cameras
from callkit.media.convert import PcmConverter, SampleFifo
from callkit.media.volume import rms_dbfs

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter at the repo root; it prints one JSON line last."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- no PortAudio

NO_PORTAUDIO = """
    # Make PortAudio unfindable the way a machine without it is: sounddevice's own loader
    # looks it up with ctypes.util.find_library (and, on macOS/Windows, in the wheel's
    # _sounddevice_data package), then raises OSError from its import.
    import ctypes.util, sys
    _find = ctypes.util.find_library
    ctypes.util.find_library = lambda name: None if "portaudio" in name else _find(name)
    sys.modules["_sounddevice_data"] = None
"""


def test_no_portaudio_microphone_raises_1101_and_everything_else_runs() -> None:
    out = run_python(
        NO_PORTAUDIO
        + """
    import asyncio, json, types
    import callkit.media as media, callkit  # importing never fails for want of PortAudio
    from callkit import CallEngine, CallError, CallMediaType
    from callkit.recorder import EventRecorder
    from callkit.signaling import SignalingServer, gen_user_sig
    from callkit.samples.softphone import open_audio

    result = {}
    for name, make in (("mic", media.MicrophoneSource), ("speaker", media.SpeakerSink),
                       ("list", media.list_audio_devices)):
        try:
            make()
            result[name] = None
        except CallError as exc:          # the callkit exception catches the device error
            result[name] = [exc.code, exc.message, type(exc).__name__]
    try:
        import sounddevice
        result["sounddevice_imported"] = True
    except OSError as exc:
        result["sounddevice_imported"] = str(exc)

    lines = []
    args = types.SimpleNamespace(tone=False, mic=None, no_speaker=False, speaker=None)
    source, speaker = open_audio(args, lines.append)   # the softphone falls back to a tone
    result["fallback"] = [type(source).__name__, speaker, lines]

    async def call():                     # and a real call still runs on the fallback
        server = SignalingServer(1400000001, "k" * 32)
        url = await server.start("127.0.0.1", 0)
        a = CallEngine(url, audio_source=source, ice_addresses=["127.0.0.1"])
        b = CallEngine(url, ice_addresses=["127.0.0.1"])
        ra, rb = EventRecorder(a, "a"), EventRecorder(b, "b")
        await a.init(1400000001, "a", gen_user_sig(1400000001, "k" * 32, "a"))
        await b.init(1400000001, "b", gen_user_sig(1400000001, "k" * 32, "b"))
        await a.call("b", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived")
        await b.accept()
        heard = await rb.wait_for("onUserVoiceVolumeChanged",
                                  lambda p: p["volumeMap"].get("a", 0) >= 70, timeout=15)
        await a.hangup()
        await rb.wait_for("onCallEnd")
        for e in (a, b):
            await e.destroy()
        await server.stop()
        return heard["volumeMap"]["a"]

    result["call_volume"] = asyncio.run(call())
    print(json.dumps(result))
    """
    )
    for name in ("mic", "speaker", "list"):
        code, message, cls = out[name]
        assert code == -1101 and cls == "DeviceError", out[name]
        assert "PortAudio" in message or "sounddevice" in message, message
    if sys.platform.startswith("linux"):
        assert out["mic"][1].startswith(
            "the PortAudio library is not available (PortAudio library not found)"
        ), out["mic"]
        assert out["sounddevice_imported"] == "PortAudio library not found"
    kind, speaker, lines = out["fallback"]
    assert kind == "ToneSource" and speaker is None
    assert any("sending a 440 Hz tone" in line for line in lines), lines
    assert 70 <= out["call_volume"] <= 90


def test_device_error_is_a_call_error_with_code_1101() -> None:
    err = DeviceError("no camera")
    assert isinstance(err, CallError) and err.code == -1101
    assert str(err) == "no camera (code -1101)" and repr(err) == "DeviceError('no camera')"
    with pytest.raises(CallError) as caught:
        raise err
    assert caught.value.code == -1101


# ---------------------------------------------------------------------------- real PortAudio

ASOUNDRC = """
pcm.!default {{
  type plug
  slave {{ pcm "tonefile"; format S16_LE; rate 48000; channels 1 }}
}}
pcm.tonefile {{
  type file
  slave.pcm "nullsink"
  file "/dev/null"
  infile "{raw}"
  format "raw"
}}
pcm.nullsink {{
  type null
}}
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ALSA devices are Linux's")
def test_microphone_and_speaker_through_real_portaudio(tmp_path: Path) -> None:
    """PortAudio over ALSA devices defined in a private ~/.asoundrc: the "microphone" reads
    a -20 dBFS tone from a raw file (ALSA's file plugin), the speaker plays into ALSA's null
    device. Needs the PortAudio library (Debian: libportaudio2)."""
    ToneSource(440, -20).read(48000 * 10).astype("<i2").tofile(tmp_path / "tone.raw")
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(raw=tmp_path / "tone.raw"))
    out = run_python(
        """
    import json, time
    import numpy as np
    from callkit import CallError
    from callkit.media import MicrophoneSource, SpeakerSink, list_audio_devices
    from callkit.media.volume import rms_dbfs

    devices = [[d.name, d.max_input_channels > 0, d.is_default_input]
               for d in list_audio_devices()]
    mic = MicrophoneSource()                     # the default input: our tone file
    chunks = []
    t0 = time.monotonic()
    for i in range(50):                          # 1 s, 20 ms at a time like the engine
        time.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
        chunks.append(mic.read(960))
    mic.close()
    got = np.concatenate(chunks)
    by_name = MicrophoneSource("tonefile", channels=1)
    by_name.close()
    errors = []
    for bad in ("no-such-device", 999):
        try:
            MicrophoneSource(bad)
        except CallError as exc:
            errors.append([exc.code, exc.message])

    speaker = SpeakerSink()
    tone = (np.sin(np.arange(4800) * 0.1) * 8000).astype(np.int16)
    for _ in range(10):                          # two inputs, mixed, 16 kHz and 48 kHz
        speaker.write(tone[:1600], 16000, key="bob")
        speaker.write(np.stack([tone, tone], axis=1), 48000, key="carol")
        time.sleep(0.1)
    time.sleep(0.3)
    left = {k: len(f) for k, (f, _) in speaker._inputs.items()}
    speaker.close()
    print(json.dumps({"devices": devices, "shape": list(got.shape), "dtype": str(got.dtype),
                      "level": rms_dbfs(got[len(got) // 2:]), "errors": errors,
                      "speaker": repr(speaker), "left": left}))
    """,
        env={"HOME": str(tmp_path)},
    )
    assert ["default", True, True] in out["devices"], out["devices"]
    assert out["shape"] == [48000, 1] and out["dtype"] == "int16"
    assert abs(out["level"] + 20) < 1.0, out["level"]  # the tone arrived, at its level
    assert out["errors"][0][0] == -1101 and "no-such-device" in out["errors"][0][1]
    assert out["errors"][1][0] == -1101 and "999" in out["errors"][1][1]
    assert out["speaker"].startswith("SpeakerSink(device='default'")
    assert all(n < 48000 * 0.2 for n in out["left"].values()), out["left"]  # it played


# ---------------------------------------------------------------------------- cameras


def test_camera_through_pyav_capture_thread() -> None:
    """The capture thread with a real FFmpeg input (lavfi's test source, paced in real time)."""
    import time

    cam = CameraSource(
        "testsrc=size=320x240:rate=30,realtime", input_format="lavfi", width=160, height=120, fps=30
    )
    try:
        first = cam.read()  # before the first capture: black, right size
        assert (first.width, first.height, first.format.name) == (160, 120, "yuv420p")
        deadline = time.monotonic() + 5
        while cam.frames_captured < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cam.frames_captured >= 5 and cam.error is None
        a, b = cam.read(), cam.read()
        assert a is not b and (a.width, a.height) == (160, 120)  # never the same object
        assert np.array_equal(a.to_ndarray(), b.to_ndarray())  # the same newest image
        assert a.to_ndarray()[:120].std() > 10  # a picture, not black
    finally:
        cam.close()


def test_missing_camera_raises_1101() -> None:
    with pytest.raises(CallError) as err:
        CameraSource("/dev/no-such-camera")
    assert err.value.code == -1101
    assert "no-such-camera" in err.value.message or "input format" in err.value.message
    with pytest.raises(DeviceError, match="no 'nope' input format"):
        CameraSource("x", input_format="nope")
    assert isinstance(list_cameras(), list)


# ---------------------------------------------------------------------------- plumbing


def test_sample_fifo_wraps_drops_oldest_and_prebuffers() -> None:
    fifo = SampleFifo(10, 1)
    fifo.write(np.arange(1, 8, dtype=np.int16).reshape(-1, 1))
    assert fifo.read(5)[:, 0].tolist() == [1, 2, 3, 4, 5]
    fifo.write(np.arange(8, 16, dtype=np.int16).reshape(-1, 1))  # wraps; 10 fit
    assert len(fifo) == 10 and fifo.dropped == 0
    fifo.write(np.array([[16], [17]], dtype=np.int16))  # drops 6 and 7
    assert fifo.dropped == 2
    assert fifo.read(12)[:, 0].tolist() == [*range(8, 18), 0, 0]
    assert fifo.underruns == 1
    primed = SampleFifo(100, 2, prebuffer=4)
    primed.write(np.ones((3, 2), dtype=np.int16))
    assert not primed.read(2).any()  # waits for 4 queued
    primed.write(np.ones((1, 2), dtype=np.int16))
    assert primed.read(2).all() and len(primed) == 2


def test_pcm_converter_resamples_and_remixes_keeping_level_and_pitch() -> None:
    conv = PcmConverter(48000, 1)
    stereo16k = np.repeat(ToneSource(1000, -20, sample_rate=16000).read(16000), 2, axis=1)
    out = np.concatenate(
        [conv.convert(stereo16k[i : i + 320], 16000) for i in range(0, 16000, 320)]
    )
    assert out.dtype == np.int16 and out.shape[1] == 1
    assert abs(len(out) - 48000) < 200
    assert abs(rms_dbfs(out[2000:]) + 20) < 0.3
    spectrum = np.abs(np.fft.rfft(out[2000:34000, 0]))
    assert abs(np.argmax(spectrum) * 48000 / 32000 - 1000) < 3
    to_stereo = PcmConverter(48000, 2).convert(np.ones(10, dtype=np.float32) * 0.5, 48000)
    assert to_stereo.shape == (10, 2) and int(to_stereo[0, 0]) == 16384
