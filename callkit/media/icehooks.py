"""Per-peer-connection hooks into aioice.

aiortc creates :class:`aioice.ice.Connection` objects internally (one per ICE transport of an
``RTCPeerConnection``) and offers no way to choose the local addresses to gather on or to
intercept outgoing datagrams. This module adds both, per connection:

* **host addresses**: ``aioice.ice.get_host_addresses`` is wrapped; while a registered
  ``Connection.gather_candidates`` runs (tracked with a :class:`contextvars.ContextVar`), the
  wrapper returns the registered list instead of the machine's interfaces. This is how tests
  gather on ``127.0.0.1`` only (aioice itself always skips ``127.0.0.1``).
* **shaping**: ``StunProtocol.connection_made`` is wrapped so that the protocol's transport is
  replaced by a thin proxy whose ``sendto`` hands every datagram to the
  :class:`media.netsim.NetworkShaper` registered for ``protocol.receiver`` (the Connection).
  ICE checks, DTLS, RTP and RTCP all leave through that ``sendto``
  (``StunProtocol.send_stun`` / ``send_data`` in aioice 0.13). The shaper is looked up on every
  datagram, so :func:`attach` may also be called on a running connection.
* **several TURN servers**: aiortc hands aioice only the first TURN URL of its
  configuration. ``aioice.ice.relayed_candidate`` is wrapped so that, for a registered
  connection with ``turn_servers``, an allocation is attempted on every one of them at once
  (e.g. ``turn:...?transport=udp`` and ``turn:...?transport=tcp``) and the first in the list
  that succeeds is kept; so a network that blocks UDP still gets a relay candidate over TCP.

Registrations are kept in a :class:`weakref.WeakKeyDictionary` keyed by Connection, so they
die with the connection. The patches are installed once, at import time, and are inert for
connections that were never registered. Where each hook plugs into aioice (and which aioice
version that was checked against) is in :mod:`callkit.media._compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aioice.ice import Connection, StunProtocol

from callkit.media import _compat

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from callkit.media.netsim import NetworkShaper

__all__ = [
    "TurnServer",
    "attach",
    "connections",
    "deliver_directly",
    "dtls_transports",
    "install",
    "selected_pairs",
    "turn_errors",
    "turn_servers",
]

log = logging.getLogger("callkit.media.icehooks")

#: after the first TURN allocation succeeds, how long a preferred (earlier) one may still win
TURN_PREFERENCE_WAIT = 0.5
#: TURN URLs tried at once per connection (the first ones of the configuration)
MAX_TURN_SERVERS = 4


@dataclass(frozen=True)
class TurnServer:
    """One TURN server as aioice's ``relayed_candidate`` takes it."""

    server: tuple[str, int]
    username: str | None
    password: str | None
    ssl: bool
    transport: str


def turn_servers(ice_servers: list[Any]) -> list[TurnServer]:
    """Every usable TURN URL of aiortc ``RTCIceServer`` s, in order (aiortc's own rules:
    ``turn:`` with udp/tcp, ``turns:`` with tcp, password credentials only)."""
    found: list[TurnServer] = []
    for server in ice_servers:
        urls = server.urls if isinstance(server.urls, list) else [server.urls]
        if getattr(server, "credentialType", "password") != "password":
            continue
        for url in urls:
            try:
                parsed = _compat.parse_stun_turn_uri(url)
            except ValueError:
                continue
            scheme, transport = parsed["scheme"], parsed.get("transport")
            if scheme not in ("turn", "turns") or (scheme == "turns" and transport != "tcp"):
                continue
            if transport not in ("udp", "tcp"):
                continue
            found.append(
                TurnServer(
                    (parsed["host"], parsed["port"]),
                    server.username,
                    server.credential,
                    scheme == "turns",
                    transport,
                )
            )
    return found[:MAX_TURN_SERVERS]


@dataclass
class _Registration:
    host_addresses: list[str] | None
    shaper: NetworkShaper | None
    turn_servers: list[TurnServer] | None = None
    #: why TURN allocations failed (e.g. "401 Unauthorized"), for error messages
    turn_errors: list[str] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)  # aioice's stun.TransactionFailed
    code = getattr(response, "error_code", None) if response is not None else None
    if code is not None:
        reason = response.attributes.get("ERROR-CODE", (code, ""))[1]  # type: ignore[union-attr]
        return f"{code} {str(reason).rstrip(chr(0))}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def turn_errors(pc: RTCPeerConnection) -> list[str]:
    """Why the TURN allocations of ``pc``'s connections failed, if they did."""
    errors: list[str] = []
    for conn in connections(pc):
        reg = _registry.get(conn)
        if reg is not None:
            errors += [e for e in reg.turn_errors if e not in errors]
    return errors


_registry: weakref.WeakKeyDictionary[Connection, _Registration] = weakref.WeakKeyDictionary()


class _ShapedTransport:
    """Proxy around a datagram transport that routes ``sendto`` through a shaper."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: Any, protocol: StunProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def sendto(self, data: bytes, addr: Any = None) -> None:
        reg = _registry.get(self._protocol.receiver)
        shaper = reg.shaper if reg is not None else None
        if shaper is None:
            self._transport.sendto(data, addr)
        else:
            shaper.send(self._transport, data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<shaped {self._transport!r}>"


def _host_addresses(conn: Connection) -> list[str] | None:
    reg = _registry.get(conn)
    return reg.host_addresses if reg is not None else None


class _Deliver:
    """What an inbound shaper "sends" to: aioice's own ``datagram_received``."""

    __slots__ = ("_deliver", "_protocol")

    def __init__(self, deliver: Callable[[bytes, Any], None], protocol: StunProtocol) -> None:
        self._deliver = deliver
        self._protocol = protocol

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._deliver(data, addr)

    def is_closing(self) -> bool:
        transport = self._protocol.transport
        return transport is None or transport.is_closing()


def _received(
    deliver: Callable[[bytes, Any], None], protocol: StunProtocol, data: bytes, addr: Any
) -> None:
    reg = _registry.get(protocol.receiver)
    inbound = getattr(reg.shaper, "inbound", None) if reg is not None else None
    if inbound is None:
        deliver(data, addr)
    else:
        inbound.send(_Deliver(deliver, protocol), data, addr)


def _shaped(transport: Any, protocol: StunProtocol) -> Any:
    return (
        transport
        if isinstance(transport, _ShapedTransport)
        else _ShapedTransport(transport, protocol)
    )


async def _relayed_candidate(orig: Any, conn: Connection | None, kwargs: dict[str, Any]) -> Any:
    reg = _registry.get(conn) if conn is not None else None
    servers = reg.turn_servers if reg is not None else None
    try:
        if not servers or len(servers) < 2:
            return await orig(**kwargs)
        return await _first_relay(orig, kwargs, servers)
    except Exception as exc:  # aioice drops it silently: keep it for the error message
        if reg is not None and len(reg.turn_errors) < 8:
            reg.turn_errors.append(_describe(exc))
        raise


def install() -> None:
    """Install the aioice patches (idempotent; done automatically at import). The patching
    itself lives in :mod:`callkit.media._compat`."""
    _compat.patch_host_addresses(_host_addresses)
    _compat.patch_datagram_transport(_shaped)
    _compat.patch_datagram_received(_received)
    _compat.patch_relayed_candidate(_relayed_candidate)
    _compat.patch_mdns_end_of_candidates()
    _compat.patch_relay_nomination()


async def _first_relay(orig: Any, kwargs: dict[str, Any], servers: list[TurnServer]) -> Any:
    """Allocate on every TURN server at once; keep the first in ``servers`` order that
    succeeds (waiting at most TURN_PREFERENCE_WAIT for earlier ones after any success), and
    close the other allocations."""
    tasks = [
        asyncio.ensure_future(
            orig(
                **{
                    **kwargs,
                    "turn_server": s.server,
                    "turn_username": s.username,
                    "turn_password": s.password,
                    "turn_ssl": s.ssl,
                    "turn_transport": s.transport,
                }
            )
        )
        for s in servers
    ]
    chosen: asyncio.Future[Any] | None = None
    try:
        pending = set(tasks)
        while pending and chosen is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.exception() is None for t in done):
                earlier = [t for t in tasks[: _first_ok(tasks)] if t in pending]
                if earlier:
                    await asyncio.wait(earlier, timeout=TURN_PREFERENCE_WAIT)
                chosen = tasks[_first_ok(tasks)]
        if chosen is None:
            for t in tasks:  # all failed: raise the first one's error, as aioice would
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            raise ConnectionError("no TURN allocation")
        log.debug("relay candidate through %s", servers[tasks.index(chosen)])
        return chosen.result()
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            if t is not chosen and t.done() and not t.cancelled() and t.exception() is None:
                _, protocol = t.result()  # an allocation we do not use: release it
                with contextlib.suppress(Exception):
                    protocol.transport.close()


def _first_ok(tasks: list[asyncio.Future[Any]]) -> int:
    for i, t in enumerate(tasks):
        if t.done() and not t.cancelled() and t.exception() is None:
            return i
    return len(tasks)


def dtls_transports(pc: RTCPeerConnection) -> list[Any]:
    """The distinct aiortc ``RTCDtlsTransport`` s currently under ``pc`` (transceivers' and
    the SCTP transport's)."""
    found: dict[int, Any] = {}
    for t in pc.getTransceivers():
        for dtls in (t.sender.transport, t.receiver.transport):
            if dtls is not None:
                found.setdefault(id(dtls), dtls)
    if pc.sctp is not None:
        found.setdefault(id(pc.sctp.transport), pc.sctp.transport)
    return list(found.values())


def deliver_directly(pc: RTCPeerConnection) -> None:
    """Hand the SRTP / SRTCP of every DTLS transport of ``pc`` from its ICE socket straight to
    the transport, without aioice's queue and aiortc's reader task
    (:func:`callkit.media._compat.deliver_srtp_directly`); idempotent. Call it again after a
    renegotiation added transports."""
    for dtls in dtls_transports(pc):
        if _compat.ice_connection(dtls.transport) is not None:
            _compat.deliver_srtp_directly(dtls)


def connections(pc: RTCPeerConnection) -> list[Connection]:
    """Return the distinct aioice Connections currently under ``pc``.

    Covers every transceiver's sender/receiver transport, the SCTP transport if any, and the
    peer connection's own set of ICE transports (private in aiortc, used when present).
    """
    found: dict[int, Connection] = {}

    def add_dtls(dtls: Any) -> None:
        conn = _compat.ice_connection(getattr(dtls, "transport", None))
        if conn is not None:
            found.setdefault(id(conn), conn)

    for t in pc.getTransceivers():
        add_dtls(t.sender.transport)
        add_dtls(t.receiver.transport)
    sctp = pc.sctp
    if sctp is not None:
        add_dtls(sctp.transport)
    for ice in _compat.pc_ice_transports(pc):
        conn = _compat.ice_connection(ice)
        if conn is not None:
            found.setdefault(id(conn), conn)
    return list(found.values())


def attach(
    pc: RTCPeerConnection,
    *,
    host_addresses: list[str] | None = None,
    shaper: NetworkShaper | None = None,
    turn: list[TurnServer] | None = None,
) -> None:
    """Register host addresses, a shaper and TURN servers for every ICE connection of ``pc``.

    Call after the transceivers / data channels exist and before ``setLocalDescription``
    (gathering happens there). Calling it again is harmless: the registration of each
    connection is replaced by the latest arguments, and connections created since (e.g. by
    renegotiation) are picked up. ``host_addresses=None`` keeps aioice's default interface
    enumeration; ``[]`` gathers no host candidates. ``shaper=None`` sends unshaped. When aiortc
    later bundles transports, the surviving (primary) connection is one of those registered.
    ``turn``: every TURN server to try (see the module docstring); None: aiortc's first only.
    """
    install()
    addrs = list(host_addresses) if host_addresses is not None else None
    for conn in connections(pc):
        old = _registry.get(conn)
        _registry[conn] = _Registration(
            host_addresses=addrs,
            shaper=shaper,
            turn_servers=list(turn) if turn else None,
            turn_errors=old.turn_errors if old is not None else [],
        )


def selected_pairs(pc: RTCPeerConnection) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Return ``(local_addr, remote_addr)`` of each nominated ICE pair under ``pc``.

    Empty before ICE completes.
    """
    pairs = []
    for conn in connections(pc):
        for pair in _compat.nominated_pairs(conn):
            pairs.append((pair.local_addr, pair.remote_addr))
    return pairs


install()
