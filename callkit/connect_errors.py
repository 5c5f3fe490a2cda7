"""Why a connection to the signaling service failed, in words, with what to check.

:func:`describe_connect_error` turns what aiohttp raised while opening the WebSocket into one
short sentence that names the URL, the cause and what to check; the engine raises it as
``CallError(-1405 SIGNALING_UNREACHABLE, ...)`` from ``init``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp

#: what aiohttp raises for a URL whose scheme is not http(s)/ws(s) (aiohttp >= 3.10)
_NON_WS_URL: tuple[type[BaseException], ...] = tuple(
    t
    for t in (getattr(aiohttp.client_exceptions, "NonHttpUrlClientError", None),)
    if isinstance(t, type)
)
#: longest detail quoted from an exception we do not recognise
_MAX_DETAIL = 160


def _host_port(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
        host = parts.hostname or "?"
    except ValueError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path(url: str) -> str:
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return "?"


def _cause(url: str, exc: BaseException) -> str:
    """The cause in words and what to check (without the URL)."""
    where = _host_port(url)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        status = exc.status
        if status == 404:
            return (
                f"the server answered HTTP 404 Not Found for path {_path(url)}: there is no "
                "WebSocket endpoint there; check the URL's path (callkit serve listens on /ws)"
            )
        if status == 503:
            return (
                "the server answered HTTP 503: it refuses more connections; "
                "try again later or raise its connection limit"
            )
        if status in (401, 403):
            return f"the server answered HTTP {status}: it does not let this client in"
        if status == 200 or status == 101:
            return (
                "the server answered but did not speak the WebSocket protocol; "
                "check that the URL points at a callkit signaling service"
            )
        return (
            f"the server answered HTTP {status} instead of opening a WebSocket; "
            "check that the URL points at a callkit signaling service"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            "the server's TLS certificate is not trusted; check the certificate "
            "(or the CA the client trusts) and that the host name matches it"
        )
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return (
            "the TLS handshake failed; check the scheme: wss:// needs a server started "
            "with TLS, ws:// one without"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror) or type(exc).__name__ == "ClientConnectorDNSError":
            return f"the host name {exc.host!r} was not found (DNS); check the host in the URL"
        if isinstance(os_error, ConnectionRefusedError):
            return (
                f"connection refused: nothing listens on {where}; check that the signaling "
                "server runs (callkit serve) and the host and port in the URL"
            )
        reason = os_error.strerror if os_error.strerror else str(os_error)
        return (
            f"cannot connect to {where} ({reason}); check the host and port in the URL "
            "and the network between here and there"
        )
    if isinstance(exc, _NON_WS_URL):
        return "the scheme must be ws:// (or wss:// with TLS), as in ws://HOST:PORT/ws"
    if isinstance(exc, aiohttp.InvalidURL):
        return "this is not a valid URL; expected ws://HOST:PORT/ws (or wss:// with TLS)"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return (
            "the server closed the connection during the WebSocket handshake; check the "
            "scheme (ws:// or wss://) and that the URL points at a callkit signaling service"
        )
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return (
            f"no answer from {where} in time; check the host and port, a firewall, "
            "or whether the server is overloaded"
        )
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 3] + "..."
    return f"{detail}; check the URL and that the signaling server runs"


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One line: ``cannot reach the signaling service at URL: cause; what to check``."""
    return f"cannot reach the signaling service at {url}: {_cause(url, exc)}"
