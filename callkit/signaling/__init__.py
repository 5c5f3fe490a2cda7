"""The callkit signaling service: auth, presence, the call state machine, routing."""

from __future__ import annotations

import logging

from .server import ServerConfig, SignalingServer
from .usersig import gen_user_sig, verify_user_sig

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["ServerConfig", "SignalingServer", "gen_user_sig", "verify_user_sig"]
