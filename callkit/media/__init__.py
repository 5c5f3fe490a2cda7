"""callkit media: aiortc peer sessions, sources and sinks, volume, quality, network simulation."""

from __future__ import annotations

import logging

from .bot import MixSource, PushAudioSource, PushVideoSource
from .devices import (
    AudioDevice,
    CameraDevice,
    CameraSource,
    MicrophoneSource,
    SpeakerSink,
    list_audio_devices,
    list_cameras,
)
from .errors import DeviceError
from .files import FileAudioSource, FileSource, FileVideoSource, RecordedFiles, RecorderSink
from .netsim import NetworkConditions, NetworkCounts
from .sources import AudioSource, SilenceSource, TestPatternSource, ToneSource, VideoSource

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AudioDevice",
    "AudioSource",
    "CameraDevice",
    "CameraSource",
    "DeviceError",
    "FileAudioSource",
    "FileSource",
    "FileVideoSource",
    "MicrophoneSource",
    "MixSource",
    "NetworkConditions",
    "NetworkCounts",
    "PushAudioSource",
    "PushVideoSource",
    "RecordedFiles",
    "RecorderSink",
    "SilenceSource",
    "SpeakerSink",
    "TestPatternSource",
    "ToneSource",
    "VideoSource",
    "list_audio_devices",
    "list_cameras",
]
