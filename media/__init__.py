"""callkit media: aiortc peer sessions, sources and sinks, volume, quality, network simulation."""

from __future__ import annotations

import logging

from .netsim import NetworkConditions
from .sources import AudioSource, SilenceSource, TestPatternSource, ToneSource, VideoSource

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AudioSource",
    "NetworkConditions",
    "SilenceSource",
    "TestPatternSource",
    "ToneSource",
    "VideoSource",
]
