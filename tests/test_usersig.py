"""TLS-SIG-API v2 UserSig: public test vectors, round trips and refusals."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callkit.signaling.usersig import UserSigError, UserSigInfo, gen_user_sig, verify_user_sig

APP = 1400000000
KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
T0 = 1569910200
EXPIRE = 15552000

VECTOR_SIG = "CpjuBdQs9ZwnuGAJR8onoOeI9fweX2vIMMY94iOJWJY="
VECTOR_TOKEN = (
    "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwjDB4pTsxIKCzBQlK0MTAyiAyKRWFGQWpQLFTU1NjeCiJZm5"
    "YDEzS0tDAyOYaHFmOtBM54KsUqeUwGLLqPK8UndHryCL-Lx8-1RPy7Ty1AijMk9f30hLk0x-r3CvSFulWgAPYy*9"
)
VECTOR_USERBUF_SIG = "bC3u5cuslSg8Ds7KY58mhSkTrxunrFu50dkdkCYH4i8="
VECTOR_USERBUF_TOKEN = (
    "eJw9zEELwiAcBfDv4jmGs1lu0GkRUd0chMeWbv2zDdEZg*i7J5a92-s9eC-UnHj2VBZViGQYLWIHqcYJOoic0El9MQYk"
    "qvIC--Jd1GzAquCUUvLXCYZoq7LMMUnqnbKt78KvOB-u6Rr6AG299PTq3YP3bOvWR0HZcOO6sbMf7c5TLLXUtdgXwDbo"
    "-QEmHTZF"
)


def _decode(token: str) -> dict:
    raw = base64.b64decode(token.replace("*", "+").replace("-", "/").replace("_", "="))
    return json.loads(zlib.decompress(raw))


def _encode(obj: object) -> str:
    raw = zlib.compress(json.dumps(obj, separators=(",", ":")).encode())
    return base64.b64encode(raw).decode().replace("+", "*").replace("/", "-").replace("=", "_")


def test_public_vector_byte_for_byte() -> None:
    token = gen_user_sig(APP, KEY, "0", EXPIRE, now=T0)
    assert token == VECTOR_TOKEN
    assert _decode(token)["TLS.sig"] == VECTOR_SIG


def test_public_vector_with_userbuf_byte_for_byte() -> None:
    token = gen_user_sig(APP, KEY, "0", EXPIRE, now=T0, userbuf=b"abc")
    assert token == VECTOR_USERBUF_TOKEN
    fields = _decode(token)
    assert fields["TLS.sig"] == VECTOR_USERBUF_SIG
    assert fields["TLS.userbuf"] == "YWJj"


def test_token_key_order() -> None:
    assert list(_decode(VECTOR_USERBUF_TOKEN)) == [
        "TLS.ver",
        "TLS.identifier",
        "TLS.sdkappid",
        "TLS.expire",
        "TLS.time",
        "TLS.userbuf",
        "TLS.sig",
    ]


def test_verify_public_vectors() -> None:
    info = verify_user_sig(APP, KEY, "0", VECTOR_TOKEN, now=T0 + 10)
    assert info == UserSigInfo("0", APP, T0, EXPIRE, None)
    assert info.expires_at == T0 + EXPIRE
    info = verify_user_sig(APP, KEY, "0", VECTOR_USERBUF_TOKEN, now=T0)
    assert info.userbuf == b"abc"


def test_round_trip_default_now_and_expire() -> None:
    token = gen_user_sig(1400000001, "secret", "alice")
    info = verify_user_sig(1400000001, "secret", "alice", token)
    assert info.identifier == "alice"
    assert info.sdk_app_id == 1400000001
    assert info.expire == 15552000


@pytest.mark.parametrize("user", ["bob", "用户", "a b\tc", "x" * 64])
def test_round_trip_various_users(user: str) -> None:
    token = gen_user_sig(7, "k€y", user, 60, now=1000)
    assert verify_user_sig(7, "k€y", user, token, now=1060).identifier == user


def test_expired() -> None:
    token = gen_user_sig(APP, KEY, "0", 100, now=1000)
    verify_user_sig(APP, KEY, "0", token, now=1100)  # the boundary second is still valid
    with pytest.raises(UserSigError) as err:
        verify_user_sig(APP, KEY, "0", token, now=1100.5)
    assert err.value.reason == "expired"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("app", "key", "user", "reason"),
    [
        (APP, "another key", "0", "bad signature"),
        (APP, KEY, "1", "wrong identifier"),
        (APP + 1, KEY, "0", "wrong sdkappid"),
    ],
)
def test_refusals(app: int, key: str, user: str, reason: str) -> None:
    with pytest.raises(UserSigError) as err:
        verify_user_sig(app, key, user, VECTOR_TOKEN, now=T0)
    assert err.value.reason == reason


def test_tampered_fields_fail_signature() -> None:
    fields = _decode(VECTOR_TOKEN)
    fields["TLS.expire"] = EXPIRE * 10
    with pytest.raises(UserSigError) as err:
        verify_user_sig(APP, KEY, "0", _encode(fields), now=T0)
    assert err.value.reason == "bad signature"
    fields = _decode(VECTOR_USERBUF_TOKEN)
    fields["TLS.userbuf"] = "YWJk"
    with pytest.raises(UserSigError) as err:
        verify_user_sig(APP, KEY, "0", _encode(fields), now=T0)
    assert err.value.reason == "bad signature"


GOOD = _decode(VECTOR_TOKEN)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64 !!",
        "eJyr",  # truncated zlib
        base64.b64encode(b"plain text").decode(),
        _encode([1, 2, 3]),
        _encode("string"),
        _encode({}),
        _encode({k: v for k, v in GOOD.items() if k != "TLS.sig"}),
        _encode({**GOOD, "TLS.ver": "1.0"}),
        _encode({**GOOD, "TLS.sdkappid": str(APP)}),
        _encode({**GOOD, "TLS.time": True}),
        _encode({**GOOD, "TLS.expire": 1.5}),
        _encode({**GOOD, "TLS.identifier": 0}),
        _encode({**GOOD, "TLS.sig": None}),
        _encode({**GOOD, "TLS.userbuf": "!!"}),
        _encode({**GOOD, "TLS.userbuf": 5}),
        _encode({**GOOD, "TLS.userbuf": None}),
        base64.b64encode(zlib.compress(b"\xff\xfe")).decode(),
        base64.b64encode(zlib.compress(b"[" * 100000)).decode(),
        "A" * 100000,
    ],
)
def test_malformed(token: str) -> None:
    with pytest.raises(UserSigError) as err:
        verify_user_sig(APP, KEY, "0", token, now=T0)
    assert err.value.reason == "malformed"


@pytest.mark.parametrize("token", [None, 42, b"bytes", ["list"]])
def test_non_string_token(token: object) -> None:
    with pytest.raises(UserSigError) as err:
        verify_user_sig(APP, KEY, "0", token, now=T0)  # type: ignore[arg-type]
    assert err.value.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_garbage_text_only_raises_usersig_error(token: str) -> None:
    with pytest.raises(UserSigError):
        verify_user_sig(APP, KEY, "0", token, now=T0)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-_"))
def test_garbage_token_alphabet_only_raises_usersig_error(token: str) -> None:
    with pytest.raises(UserSigError):
        verify_user_sig(APP, KEY, "0", token, now=T0)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "TLS.userbuf"]), JSON))
def test_garbage_json_only_raises_usersig_error(fields: dict) -> None:
    token = _encode({**GOOD, **fields})
    unchanged = all(
        fields.get(k, v) == v and type(fields.get(k, v)) is type(v) for k, v in GOOD.items()
    )
    if unchanged and "TLS.userbuf" not in fields:
        return  # hypothesis rebuilt the valid token
    with pytest.raises(UserSigError):
        verify_user_sig(APP, KEY, "0", token, now=T0)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=32), st.integers(1, 2**32), st.binary(max_size=16) | st.none())
def test_round_trip_property(user: str, app: int, userbuf: bytes | None) -> None:
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        return
    token = gen_user_sig(app, "key", user, 10, now=500, userbuf=userbuf)
    info = verify_user_sig(app, "key", user, token, now=510)
    assert (info.identifier, info.sdk_app_id, info.userbuf) == (user, app, userbuf)
