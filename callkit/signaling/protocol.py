"""Wire messages between a CallEngine and the signaling service.

Every message is a JSON object with ``v`` (protocol version), ``type`` and, for requests,
an ``id`` that the reply echoes. One frozen dataclass per message type; ``decode`` validates
a raw text frame and returns the dataclass, or raises :class:`ProtocolError` with a code.
Field names on the wire are the dataclass fields in camelCase (see docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from .codes import ErrorCode
from .relaydata import MAX_NESTING, too_deep

VERSION = 1
#: largest text frame the service reads (bytes); larger frames get RATE_LIMITED and are dropped
MAX_MESSAGE_BYTES = 64 * 1024
#: largest SDP / candidate payload relayed
MAX_RELAY_BYTES = 48 * 1024
MAX_ID_LEN = 64
MAX_STR_LEN = 1024
#: longest ``userSig`` accepted: a TLS-SIG-API v2 sig is ~420 characters, plus ~1.3 per byte
#: of userbuf (a 768-byte userbuf makes 1256 characters; 2 KiB of userbuf fits)
MAX_USER_SIG_CHARS = 4096
#: per-field string limits other than MAX_STR_LEN (wire names)
_STR_LIMITS = {"userSig": MAX_USER_SIG_CHARS}

#: TUICallKit user ids: letters, digits, '-' and '_', 1 to 32 bytes (ASCII, so 32 characters)
USER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def valid_user_id(user_id: object) -> bool:
    """True for a well-formed TUICallKit user id (both the engine and the service check it)."""
    return isinstance(user_id, str) and USER_ID_RE.fullmatch(user_id) is not None


class ProtocolError(Exception):
    """A message that cannot be accepted; ``code`` is an ErrorCode, ``request_id`` if known."""

    def __init__(self, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass(frozen=True)
class Message:
    """Base of every wire message."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able dict of this message, with ``v`` and ``type``."""
        out: dict[str, Any] = {"v": VERSION, "type": self.TYPE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[_camel(f.name)] = value
        return out

    def encode(self) -> str:
        """The JSON text of this message."""
        return json.dumps(self.to_wire(), separators=(",", ":"))


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Request(Message):
    """A client request; the service answers with :class:`Reply` or :class:`ErrorReply`."""

    id: int = 0


@dataclass(frozen=True)
class Login(Request):
    TYPE: ClassVar[str] = "login"
    sdk_app_id: int = 0
    user_id: str = ""
    user_sig: str = ""
    multi_device: bool = False
    #: the ``sessionId`` of an earlier login to resume after a dropped socket (None: fresh login)
    resume: str | None = None


@dataclass(frozen=True)
class Call(Request):
    """Start a 1v1 (one callee, no group id) or group call."""

    TYPE: ClassVar[str] = "call"
    callees: list[str] = field(default_factory=list)
    media_type: int = 1
    group_id: str = ""
    timeout: float = 30.0
    user_data: str = ""


@dataclass(frozen=True)
class Accept(Request):
    TYPE: ClassVar[str] = "accept"
    call_id: str = ""


@dataclass(frozen=True)
class Reject(Request):
    TYPE: ClassVar[str] = "reject"
    call_id: str = ""


@dataclass(frozen=True)
class Ignore(Request):
    TYPE: ClassVar[str] = "ignore"
    call_id: str = ""


@dataclass(frozen=True)
class Hangup(Request):
    TYPE: ClassVar[str] = "hangup"
    call_id: str = ""


@dataclass(frozen=True)
class Invite(Request):
    TYPE: ClassVar[str] = "invite"
    call_id: str = ""
    callees: list[str] = field(default_factory=list)
    timeout: float = 30.0


@dataclass(frozen=True)
class Join(Request):
    TYPE: ClassVar[str] = "join"
    room_id: int = 0
    group_id: str = ""
    media_type: int = 1


@dataclass(frozen=True)
class SwitchMedia(Request):
    TYPE: ClassVar[str] = "switchMedia"
    call_id: str = ""
    media_type: int = 1


@dataclass(frozen=True)
class Device(Request):
    """Microphone / camera opened or closed (None: unchanged)."""

    TYPE: ClassVar[str] = "device"
    call_id: str = ""
    audio: bool | None = None
    video: bool | None = None


@dataclass(frozen=True)
class Relay(Request):
    """SDP offer/answer or ICE candidate for another member of the same call."""

    TYPE: ClassVar[str] = "relay"
    call_id: str = ""
    to: str = ""
    kind: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    KINDS: ClassVar[tuple[str, ...]] = ("offer", "answer", "candidate", "renegotiate")


@dataclass(frozen=True)
class SelfInfo(Request):
    TYPE: ClassVar[str] = "selfInfo"
    nickname: str = ""
    avatar_url: str = ""


@dataclass(frozen=True)
class MultiDevice(Request):
    """Turn multi-device on or off for this session after login (as the ``login`` field)."""

    TYPE: ClassVar[str] = "multiDevice"
    enable: bool = False


@dataclass(frozen=True)
class Ping(Request):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class QueryRecords(Request):
    """The signed-in user's own call records, newest first (times in Unix ms)."""

    TYPE: ClassVar[str] = "queryRecords"
    result: str | None = None
    since: int | None = None
    until: int | None = None
    page: int = 1
    page_size: int = 20


@dataclass(frozen=True)
class DeleteRecords(Request):
    """Remove calls from the signed-in user's own history (others keep theirs)."""

    TYPE: ClassVar[str] = "deleteRecords"
    call_ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Reply(Message):
    """Success answer to request ``id``; ``data`` holds the result (e.g. ``{"call": {...}}``)."""

    TYPE: ClassVar[str] = "ok"
    id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorReply(Message):
    """Failure answer; ``id`` is None when the request id could not be read."""

    TYPE: ClassVar[str] = "error"
    id: int | None = None
    code: int = int(ErrorCode.PROTOCOL_ERROR)
    message: str = ""


@dataclass(frozen=True)
class Event(Message):
    """A TUICallKit event for this user: ``event`` name, ``payload``, and the call snapshot."""

    TYPE: ClassVar[str] = "event"
    event: str = ""
    call_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] | None = None


@dataclass(frozen=True)
class Relayed(Message):
    """An SDP / candidate from ``from_user`` (wire key ``fromUser``) in call ``call_id``."""

    TYPE: ClassVar[str] = "relayed"
    call_id: str = ""
    from_user: str = ""
    kind: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Kicked(Message):
    """The session was replaced by a newer login of the same user (onKickedOffline)."""

    TYPE: ClassVar[str] = "kicked"


@dataclass(frozen=True)
class SigExpired(Message):
    """The session's UserSig expired while online (onUserSigExpired)."""

    TYPE: ClassVar[str] = "sigExpired"


CLIENT_MESSAGES: dict[str, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        Login,
        Call,
        Accept,
        Reject,
        Ignore,
        Hangup,
        Invite,
        Join,
        SwitchMedia,
        Device,
        Relay,
        SelfInfo,
        MultiDevice,
        Ping,
        QueryRecords,
        DeleteRecords,
    )
}
SERVER_MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Reply, ErrorReply, Event, Relayed, Kicked, SigExpired)
}


# --------------------------------------------------------------------------- decoding


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate one field value against its type hint; returns the (possibly converted) value."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be a boolean, got {value!r:.40}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r:.40}")
        if abs(value) > 2**53:
            raise ValueError(f"{where} is out of range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r:.40}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r:.40}")
        limit = _STR_LIMITS.get(where, MAX_STR_LEN)
        if len(value) > limit:
            raise ValueError(f"{where} is longer than {limit} characters")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r:.40}")
        if len(value) > 64:
            raise ValueError(f"{where} has more than 64 items")
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {value!r:.40}")
        if too_deep(value):
            raise ValueError(f"{where} nests deeper than {MAX_NESTING} levels")
        return value
    raise TypeError(f"unsupported field type {hint!r}")  # pragma: no cover - programming error


def from_wire(obj: Any, registry: dict[str, type[Message]] | None = None) -> Message:
    """Build a message from a decoded JSON value; raises ProtocolError."""
    table: Mapping[str, type[Message]] = registry if registry is not None else CLIENT_MESSAGES
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "message must be a JSON object")
    raw_id = obj.get("id")
    request_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    v = obj.get("v", VERSION)
    if v != VERSION:
        raise ProtocolError(
            ErrorCode.PROTOCOL_ERROR, f"unsupported protocol version {v!r:.20}", request_id
        )
    kind = obj.get("type")
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            ErrorCode.PROTOCOL_ERROR, f"unknown message type {kind!r:.40}", request_id
        )
    kwargs: dict[str, Any] = {}
    try:
        for f in _wire_fields(cls):
            if f.key not in obj:
                if f.name == "id" and issubclass(cls, Request):
                    raise ValueError("id is required")
                if f.optional:
                    continue
                raise ValueError(f"{f.key} is required")
            kwargs[f.name] = _check(obj[f.key], f.hint, f.key)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.PARAM_INVALID, f"{kind}: {exc}", request_id) from None
    return cls(**kwargs)


@dataclass(frozen=True)
class _WireField:
    name: str
    key: str  # its camelCase name on the wire
    hint: Any
    optional: bool  # may be absent: it has a default and is not in _REQUIRED


_WIRE_FIELDS: dict[str, tuple[_WireField, ...]] = {}


def _wire_fields(cls: type[Message]) -> tuple[_WireField, ...]:
    """What :func:`from_wire` checks for ``cls``, worked out once per class
    (``typing.get_type_hints`` alone took most of a decode)."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    found = _WIRE_FIELDS.get(key)
    if found is None:
        found = _WIRE_FIELDS[key] = _work_out_fields(cls)
    return found


def _work_out_fields(cls: type[Message]) -> tuple[_WireField, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _WireField(
            f.name,
            _camel(f.name),
            hints[f.name],
            (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
            and not _required(cls, f.name),
        )
        for f in dataclasses.fields(cls)
    )


#: fields that must be present on the wire even though the dataclass gives them a default
_REQUIRED: dict[str, frozenset[str]] = {
    "login": frozenset({"sdk_app_id", "user_id", "user_sig"}),
    "call": frozenset({"callees", "media_type"}),
    "accept": frozenset({"call_id"}),
    "reject": frozenset({"call_id"}),
    "ignore": frozenset({"call_id"}),
    "hangup": frozenset({"call_id"}),
    "invite": frozenset({"call_id", "callees"}),
    "join": frozenset({"room_id", "media_type"}),
    "switchMedia": frozenset({"call_id", "media_type"}),
    "device": frozenset({"call_id"}),
    "relay": frozenset({"call_id", "to", "kind", "data"}),
    "deleteRecords": frozenset({"call_ids"}),
}


def _required(cls: type[Message], name: str) -> bool:
    return name in _REQUIRED.get(cls.TYPE, frozenset())


def frame_size(text: str | bytes) -> int:
    """Size of a frame in UTF-8 bytes (cheap for the usual short ASCII frame)."""
    if isinstance(text, bytes):
        return len(text)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def peek_id(text: str | bytes) -> int | None:
    """The request ``id`` of a small frame, or None (for errors about unparsed frames)."""
    if len(text) > 4096:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    raw = obj.get("id") if isinstance(obj, dict) else None
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def decode(
    text: str | bytes,
    registry: dict[str, type[Message]] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Message:
    """Parse and validate one text frame; raises ProtocolError (never anything else)."""
    if frame_size(text) > max_bytes:
        raise ProtocolError(ErrorCode.RATE_LIMITED, f"message larger than {max_bytes} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "message is not valid JSON") from None
    return from_wire(obj, registry)


def decode_server(text: str | bytes) -> Message:
    """Parse a server -> client frame (used by the engine)."""
    return decode(text, SERVER_MESSAGES)
