"""Error codes shared by the service and the engine (TUICallKit's client codes plus ours).

TUICallKit's codes are negative four-digit numbers; the service's own wire errors use the
same space so that an engine can raise exactly what the server answered.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Every error code a caller of callkit can see."""

    #: camera / microphone not available or not allowed
    PERMISSION_DENIED = -1101
    #: not initialised, or init (login) failed
    INIT_FAIL = -1201
    #: invalid parameter (empty list, > 8 callees, self, bad type, malformed message)
    PARAM_INVALID = -1202
    #: not allowed in the current call state
    REQUEST_REFUSED = -1203
    #: the same request is already running / already done
    REQUEST_REPEATED = -1204
    #: not supported in this call scene
    SCENE_NOT_SUPPORTED = -1205
    #: media (peer connection) could not be established or failed (callkit's own)
    MEDIA_FAILED = -1301
    #: a signaling message could not be delivered / the signaling link is lost
    SIGNALING_SEND_FAIL = -1401
    #: protocol violation: unparsable or unknown message (callkit's own)
    PROTOCOL_ERROR = -1402
    #: message too large or sent too fast (callkit's own)
    RATE_LIMITED = -1403
    #: the UserSig expired while online (callkit's own)
    USER_SIG_EXPIRED = -1404
    #: the signaling service cannot be reached: refused, not found, no WebSocket at the URL,
    #: TLS failure, no answer (callkit's own; the message says which and what to check)
    SIGNALING_UNREACHABLE = -1405
    #: the shared state store (Redis) of a multi-node service is unreachable; the request was
    #: not applied (callkit's own; the node reconnects by itself, retry later)
    STORE_UNAVAILABLE = -1406
    #: internal server error (callkit's own; always a bug)
    INTERNAL = -1500


class CallMediaType(IntEnum):
    """TUICallKit's CallMediaType."""

    UNKNOWN = 0
    AUDIO = 1
    VIDEO = 2


class CallRole(IntEnum):
    """TUICallKit's CallRole."""

    NONE = 0
    CALLER = 1
    CALLED = 2


class CallEndReason(IntEnum):
    """TUICallKit's CallEndReason (newer API); sent as the documented extra key ``reason``."""

    UNKNOWN = 0
    HANGUP = 1
    REJECT = 2
    NO_RESPONSE = 3
    OFFLINE = 4
    LINE_BUSY = 5
    CANCELED = 6
    OTHER_DEVICE_ACCEPTED = 7
    OTHER_DEVICE_REJECT = 8
    END_BY_SERVER = 9
