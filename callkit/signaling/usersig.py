"""UserSig: TLS-SIG-API v2 tokens, compatible with Tencent's ``TLSSigAPIv2`` libraries.

A token is ``base64url'(zlib(json))`` where base64url' is standard base64 with ``+/=``
replaced by ``*-_``, and the JSON carries an HMAC-SHA256 (keyed with the app's secret key)
over ``TLS.identifier``, ``TLS.sdkappid``, ``TLS.time``, ``TLS.expire`` and, optionally,
``TLS.userbuf``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time as _time
import zlib
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["UserSigError", "UserSigInfo", "gen_user_sig", "verify_user_sig"]

#: default validity of a generated UserSig: 180 days, as Tencent's libraries
DEFAULT_EXPIRE = 15552000
#: largest accepted token (characters) and decompressed JSON (bytes)
_MAX_TOKEN_CHARS = 8192
_MAX_JSON_BYTES = 16384

_ENCODE = str.maketrans("+/=", "*-_")
_DECODE = str.maketrans("*-_", "+/=")


class UserSigError(ValueError):
    """A UserSig that does not verify; ``reason`` is a short string such as ``"expired"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid UserSig: {reason}")
        self.reason = reason

    @property
    def hint(self) -> str:
        """What to check, for a person reading the refusal."""
        return _HINTS.get(self.reason, "generate the UserSig with gen_user_sig or callkit usersig")


_HINTS = {
    "bad signature": (
        "the UserSig was not signed with this server's secret key: sign it with the key the "
        "server runs with (callkit serve --secret-key, callkit usersig --secret-key)"
    ),
    "expired": "the UserSig expired: generate a fresh one (callkit usersig USER --expire SECONDS)",
    "wrong identifier": "the UserSig was made for another user id: sign it for this user",
    "wrong sdkappid": "the UserSig was made for another sdkAppId: sign it with the server's",
    "malformed": (
        "this is not a TLS-SIG-API v2 UserSig: generate one with gen_user_sig or callkit usersig"
    ),
}


@dataclass(frozen=True)
class UserSigInfo:
    """The verified content of a UserSig."""

    identifier: str
    sdk_app_id: int
    time: int
    expire: int
    userbuf: bytes | None = None

    @property
    def expires_at(self) -> int:
        """Unix time (seconds) after which the UserSig is expired."""
        return self.time + self.expire


def _hmac_b64(
    secret_key: str, user_id: str, sdk_app_id: int, t: int, expire: int, userbuf_b64: str | None
) -> str:
    content = (
        f"TLS.identifier:{user_id}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{t}\nTLS.expire:{expire}\n"
    )
    if userbuf_b64 is not None:
        content += f"TLS.userbuf:{userbuf_b64}\n"
    digest = hmac.new(secret_key.encode("utf-8"), content.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def gen_user_sig(
    sdk_app_id: int,
    secret_key: str,
    user_id: str,
    expire: int = DEFAULT_EXPIRE,
    *,
    now: int | None = None,
    userbuf: bytes | None = None,
) -> str:
    """Generate a UserSig for ``user_id`` valid for ``expire`` seconds from ``now``."""
    t = int(_time.time()) if now is None else int(now)
    expire = int(expire)
    sdk_app_id = int(sdk_app_id)
    userbuf_b64 = None if userbuf is None else base64.b64encode(userbuf).decode("ascii")
    token: dict[str, Any] = {
        "TLS.ver": "2.0",
        "TLS.identifier": str(user_id),
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": t,
    }
    if userbuf_b64 is not None:
        token["TLS.userbuf"] = userbuf_b64
    token["TLS.sig"] = _hmac_b64(secret_key, str(user_id), sdk_app_id, t, expire, userbuf_b64)
    raw = json.dumps(token, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(zlib.compress(raw)).decode("ascii").translate(_ENCODE)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(user_sig: object) -> dict[str, Any]:
    """Undo steps 4 and 3 of the generation; raise UserSigError("malformed") on any failure."""
    if not isinstance(user_sig, str) or not user_sig or len(user_sig) > _MAX_TOKEN_CHARS:
        raise UserSigError("malformed")
    try:
        compressed = base64.b64decode(user_sig.translate(_DECODE).encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, _MAX_JSON_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise UserSigError("malformed")
        token = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeError, binascii.Error, zlib.error, RecursionError):
        raise UserSigError("malformed") from None
    if not isinstance(token, dict):
        raise UserSigError("malformed")
    return token


def verify_user_sig(
    sdk_app_id: int,
    secret_key: str,
    user_id: str,
    user_sig: str,
    now: float | None = None,
) -> UserSigInfo:
    """Verify ``user_sig`` for ``user_id``; return its content or raise :class:`UserSigError`."""
    token = _decode(user_sig)
    ver = token.get("TLS.ver")
    identifier = token.get("TLS.identifier")
    app_id = token.get("TLS.sdkappid")
    t = token.get("TLS.time")
    expire = token.get("TLS.expire")
    sig = token.get("TLS.sig")
    userbuf_b64 = token.get("TLS.userbuf")
    if (
        ver != "2.0"
        or not isinstance(identifier, str)
        or not _is_int(app_id)
        or not _is_int(t)
        or not _is_int(expire)
        or not isinstance(sig, str)
        or ("TLS.userbuf" in token and not isinstance(userbuf_b64, str))
    ):
        raise UserSigError("malformed")
    app_id, t, expire = cast(int, app_id), cast(int, t), cast(int, expire)  # checked above
    userbuf: bytes | None = None
    if userbuf_b64 is not None:
        try:
            userbuf = base64.b64decode(userbuf_b64.encode("ascii"), validate=True)
        except (ValueError, UnicodeError, binascii.Error):
            raise UserSigError("malformed") from None
    if app_id != sdk_app_id:
        raise UserSigError("wrong sdkappid")
    if identifier != user_id:
        raise UserSigError("wrong identifier")
    current = _time.time() if now is None else now
    if current > t + expire:
        raise UserSigError("expired")
    try:
        expected = _hmac_b64(secret_key, identifier, app_id, t, expire, userbuf_b64)
        good = hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8"))
    except UnicodeError:  # lone surrogates in the token's strings
        raise UserSigError("malformed") from None
    if not good:
        raise UserSigError("bad signature")
    return UserSigInfo(identifier, app_id, t, expire, userbuf)
