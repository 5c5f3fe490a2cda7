"""Where callkit depends on aiortc / aioice internals, pinned to the versions it was made for.

Targets **aiortc 1.16.x** and **aioice 0.13.x** (pinned in pyproject.toml). Every replacement of
an aiortc or aioice internal belongs here, each with a test in ``tests/test_compat.py`` that
fails when it stops taking effect. The callkit logic stays with its owner (``icehooks``,
``rtcstats``, ``volume``); this module only knows *where* in aiortc / aioice it plugs in:

1. ``aioice.ice.get_host_addresses`` + ``Connection.gather_candidates``: per-connection host
   addresses (:func:`patch_host_addresses`, :func:`gathering_connection`);
2. ``aioice.ice.StunProtocol.connection_made``: a proxy transport per ICE socket, for the
   network shaper (:func:`patch_datagram_transport`); ``StunProtocol.datagram_received``: the
   shaper of what an ICE socket receives (:func:`patch_datagram_received`);
3. ``aioice.ice.relayed_candidate``: several TURN servers at once
   (:func:`patch_relayed_candidate`);
4. ``aiortc.RTCRtpSender._send_rtcp`` / ``_handle_rtcp_packet``: the RTCP log
   (:func:`patch_sender_rtcp`);
5. ``aiortc.rtp.compute_audio_level_dbov``: numpy audio level (:func:`patch_audio_level`);
6. ``RTCRtpReceiver.__jitter_buffer``: callkit's audio receivers get
   :class:`callkit.media.receiver.AudioReceiver` (an adaptive
   :class:`~callkit.media.jitter.AudioJitterBuffer`, Opus decoded with loss concealment in the
   loop, no frame handed to aiortc's decoder thread) instead of aiortc's ``JitterBuffer(16,
   prefetch=4)`` (:func:`use_jitter_buffer`, :func:`jitter_buffer`, and the private read
   ``RTCRtpReceiver.__codecs``: :func:`receiver_codecs`);
7. ``aioice.ice.Connection._prune_components`` / ``_remote_candidates_expected``: remote
   candidates that are all mDNS names nobody resolves, then end-of-candidates, no longer fail
   ICE while a peer-reflexive pair works (:func:`patch_mdns_end_of_candidates`);
8. ``RTCRtpSender._next_encoded_frame`` / ``_send_keyframe`` / ``__encoder``: the senders of
   one source share one encoder per codec (:func:`use_shared_encoder`, logic in
   :mod:`callkit.media.encoding`); ``OpusEncoder.codec`` (PyAV, opened at the first encode):
   in-band FEC on (:func:`opus_inband_fec`);
9. private reads: ``RTCIceGatherer._connection`` (:func:`ice_connection`),
   ``RTCPeerConnection.__iceTransports`` (:func:`pc_ice_transports`),
   ``Connection._nominated`` (:func:`nominated_pairs`), ``RTCRtpSender._ssrc``
   (:func:`sender_ssrc`), and ``aiortc.rtcicetransport.parse_stun_turn_uri`` (not exported);
10. ``aioice.ice.Connection.build_request`` / ``check_complete`` / ``_check_list_maybe_fail``:
    the controlling agent holds a relay pair's nomination while a direct pair may still succeed,
    for at most :data:`RELAY_SETTLE` s (:func:`patch_relay_nomination`);
11. ``aioice.ice.Connection.data_received`` (per connection) and ``RTCDtlsTransport.__run`` /
    ``_recv_next``: once the DTLS transport has its SRTP keys, SRTP / SRTCP datagrams go from
    the ICE socket straight to the transport's ``_handle_rtp_data`` / ``_handle_rtcp_data``,
    without aioice's per-connection ``asyncio.Queue`` and a task wake-up per packet; DTLS and
    anything else still take the queue (:func:`deliver_srtp_directly`); the ICE socket's
    ``StunProtocol.datagram_received`` hands RTP / RTCP on without trying to parse it as STUN
    (:func:`deliver_srtp_directly`);
12. ``aiortc.clock.current_ms`` / ``current_ntp_time`` (looked up on the module at call time;
    two calls per RTP packet sent, one per packet received): the same values from one
    ``time.time_ns()`` instead of ``datetime.now`` and ``timedelta`` arithmetic
    (:func:`patch_clock`);
13. ``RTCDtlsTransport._handle_rtp_data`` -> ``RtpPacket.parse`` -> ``RtpRouter.route_rtp`` ->
    ``RTCRtpReceiver._handle_rtp_packet`` (private state ``__active_ssrc``, ``__codecs``,
    ``__remote_streams``, ``__jitter_buffer``): for callkit's Opus receivers, the RTP header
    is read in place and the packet goes to the receiver's statistics and audio receiver
    without aiortc's parser, coroutines and per-packet ``datetime`` (:func:`lean_audio_rtp`);
14. ``RTCRtpSender._run_rtp`` (and its private state: ``__rtp_history``, ``__mid``, the header
    extension map, the SR counters) and ``RTCDtlsTransport._send_rtp`` stepped in place (a send
    that suspends, e.g. a first one through TURN awaiting its ChannelBind, finishes in a task):
    encoded audio is pushed into a sender from the source's clock tick instead of each
    sender's task awaiting ``track.recv()`` (:func:`push_rtp`, :class:`RtpWriter`); its
    ``_retransmit`` (NACK) is bounded to :data:`MAX_RETRANSMITS_PER_S`;
15. ``RTCRtpReceiver.__jitter_buffer`` (video): callkit's video receivers get
    :class:`callkit.media.videoreceiver.VideoReceiver` (aiortc's video jitter buffer, timestamp
    mapper and decoders, the decode in the loop when it is short, else in a worker thread of
    its own) instead of aiortc's decoder thread per receiver (:func:`use_video_receiver`,
    :func:`video_jitter_buffer`, :func:`timestamp_mapper`, :func:`video_decoder`, and the
    private read ``RTCRtpReceiver.__decoder_queue``: :func:`decoder_backlog`).

Every ``patch_*`` wraps once (the wrapper is marked) and is idempotent; calling it again only
replaces the callkit hook the wrapper calls.

TURN and nonces (issue 10). coturn answers a request that carries an expired nonce with
``438 Stale Nonce`` and a fresh NONCE; a client must retry with it (RFC 8656 section 9).
aioice 0.13.0 does: ``TurnClientMixin.request_with_retry`` retries a 438 once with the new
nonce, for every request (Allocate, Refresh, ChannelBind). So no replacement is installed
for it; ``tests/test_compat.py`` proves it against a real coturn whose nonces expire after
1 s, and fails if an aioice version without it is installed.

The failure reported in issue 10 ("438 Wrong nonce" on the second ChannelBind, then
``400 Bad Request`` on every retry) was not a nonce bug: coturn *closes a whole allocation*
when its relay socket gets an error sending to a peer (there, ENETUNREACH for a private host
candidate of the other laptop, on a TURN server without a default route). The client's next
request then lands on a new coturn session with no nonce ("Wrong nonce") and no allocation
(400). A TURN server on the internet has a default route, so it never sees ENETUNREACH;
docs/deploy.md says so and tests/nattopo.py gives its "internet" a default route.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import struct
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import aioice.ice
import aiortc.clock
import aiortc.rtp
import pylibsrtp
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcicetransport import parse_stun_turn_uri as _parse_stun_turn_uri
from aiortc.rtcrtpreceiver import StreamStatistics, TimestampMapper
from aiortc.rtcrtpsender import RTCEncodedFrame, RTCRtpSender, random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, RtpPacket
from aiortc.utils import random32, uint16_add, uint32_add
from av import AudioFrame
from av.frame import Frame

__all__ = [
    "AIORTC_COMPUTE_AUDIO_LEVEL_DBOV",
    "MAX_QUEUED",
    "MAX_RETRANSMITS_PER_S",
    "RELAY_SETTLE",
    "TARGETS",
    "RtpWriter",
    "decoder_backlog",
    "deliver_srtp_directly",
    "delivers_srtp_directly",
    "gathering_connection",
    "ice_connection",
    "is_relay_pair",
    "jitter_buffer",
    "lean_audio_rtp",
    "nominated_pairs",
    "opus_inband_fec",
    "parse_stun_turn_uri",
    "patch_audio_level",
    "patch_clock",
    "patch_datagram_received",
    "patch_datagram_transport",
    "patch_host_addresses",
    "patch_mdns_end_of_candidates",
    "patch_relay_nomination",
    "patch_relayed_candidate",
    "patch_sender_rtcp",
    "pc_ice_transports",
    "push_rtp",
    "receiver_codecs",
    "rtp_writer",
    "sender_ssrc",
    "shared_encoder",
    "timestamp_mapper",
    "use_jitter_buffer",
    "use_shared_encoder",
    "use_video_receiver",
    "version_mismatches",
    "video_decoder",
    "video_jitter_buffer",
]

log = logging.getLogger(__name__)

#: the minor versions the internals used by callkit were checked against
TARGETS = {"aiortc": "1.16", "aioice": "0.13"}


def version_mismatches() -> list[str]:
    """One line per installed aiortc / aioice whose minor version is not the targeted one."""
    problems = []
    for package, target in TARGETS.items():
        installed = version(package)
        if ".".join(installed.split(".")[:2]) != target:
            problems.append(f"{package} {installed} installed, callkit targets {target}.x")
    return problems


_MARK = "_callkit_compat"
#: the callkit function each installed wrapper calls, by patch name
_hooks: dict[str, Any] = {}


def _marked(fn: Any) -> bool:
    return bool(getattr(fn, _MARK, False))


# --------------------------------------------------------------------------- 1. host addresses
# aioice gathers host candidates from ``get_host_addresses()`` (looked up on ``aioice.ice`` at
# call time, always skipping 127.0.0.1) and aiortc offers no way to choose them per peer
# connection. The connection gathering is tracked in a ContextVar set around
# ``Connection.gather_candidates``; the wrapper asks the hook for that connection's list.

_gathering: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "callkit_gathering_connection", default=None
)


def gathering_connection() -> Connection | None:
    """The aioice Connection whose ``gather_candidates`` is running in this context."""
    return _gathering.get()


def patch_host_addresses(choose: Callable[[Connection], list[str] | None]) -> None:
    """While a Connection gathers, host addresses come from ``choose(connection)`` (None:
    aioice's own interface enumeration)."""
    _hooks["host_addresses"] = choose
    orig_get = aioice.ice.get_host_addresses
    if not _marked(orig_get):

        @functools.wraps(orig_get)
        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            conn = _gathering.get()
            if conn is not None:
                chosen = _hooks["host_addresses"](conn)
                if chosen is not None:
                    return list(chosen)
            return orig_get(use_ipv4=use_ipv4, use_ipv6=use_ipv6)

        setattr(get_host_addresses, _MARK, True)
        aioice.ice.get_host_addresses = get_host_addresses  # type: ignore[assignment]

    orig_gather = Connection.gather_candidates
    if not _marked(orig_gather):

        @functools.wraps(orig_gather)
        async def gather_candidates(self: Connection) -> None:
            token = _gathering.set(self)
            try:
                await orig_gather(self)
            finally:
                _gathering.reset(token)

        setattr(gather_candidates, _MARK, True)
        Connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


# ------------------------------------------------------------------------ 2. datagram transport
# ICE checks, DTLS, RTP and RTCP all leave through ``StunProtocol.transport.sendto``
# (``send_stun`` / ``send_data`` in aioice 0.13); the protocol's ``receiver`` is its Connection.
# Replacing the transport right after ``connection_made`` is the only place to intercept them.


def patch_datagram_transport(wrap: Callable[[Any, StunProtocol], Any]) -> None:
    """After each ICE socket opens, its protocol's transport becomes ``wrap(transport,
    protocol)`` (return the transport itself to leave it alone)."""
    _hooks["datagram_transport"] = wrap
    orig_made = StunProtocol.connection_made
    if not _marked(orig_made):

        @functools.wraps(orig_made)
        def connection_made(self: StunProtocol, transport: Any) -> None:
            orig_made(self, transport)
            self.transport = _hooks["datagram_transport"](self.transport, self)

        setattr(connection_made, _MARK, True)
        StunProtocol.connection_made = connection_made  # type: ignore[method-assign]


def patch_datagram_received(
    hook: Callable[[Callable[[bytes, Any], None], StunProtocol, bytes, Any], None],
) -> None:
    """Each datagram an ICE socket receives goes to ``hook(deliver, protocol, data, addr)``
    instead; ``deliver(data, addr)`` hands it to aioice (now or later, or never: lost)."""
    _hooks["datagram_received"] = hook
    orig = StunProtocol.datagram_received
    if not _marked(orig):
        demux = _stun_demux(orig)

        @functools.wraps(orig)
        def datagram_received(self: StunProtocol, data: Any, addr: Any) -> None:
            _hooks["datagram_received"](functools.partial(demux, self), self, data, addr)

        setattr(datagram_received, _MARK, True)
        StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]


# ------------------------------------------------------------------------- 3. relayed candidate
# aiortc hands aioice only the first TURN URL of its configuration; aioice's gathering calls
# ``relayed_candidate(**kwargs)`` (looked up on ``aioice.ice``) for that one server.

RelayHook = Callable[
    [Callable[..., Awaitable[Any]], Connection | None, dict[str, Any]], Awaitable[Any]
]


def patch_relayed_candidate(replacement: RelayHook) -> None:
    """aioice's TURN allocation becomes ``replacement(original, gathering_connection, kwargs)``."""
    _hooks["relayed_candidate"] = replacement
    orig = aioice.ice.relayed_candidate
    if not _marked(orig):

        @functools.wraps(orig)
        async def relayed_candidate(**kwargs: Any) -> Any:
            return await _hooks["relayed_candidate"](orig, _gathering.get(), kwargs)

        setattr(relayed_candidate, _MARK, True)
        aioice.ice.relayed_candidate = relayed_candidate  # type: ignore[assignment]


# ------------------------------------------------------------------------------ 4. sender RTCP
# aiortc keeps only the latest RTCP report per sender (and a smoothed RTT); the RTCP log needs
# every SR sent and every report block received. Both go through these two private coroutines.


def patch_sender_rtcp(
    on_send: Callable[[RTCRtpSender, list[Any]], None],
    on_receive: Callable[[RTCRtpSender, Any], None],
) -> None:
    """Call ``on_send(sender, packets)`` before each RTCP compound a sender sends and
    ``on_receive(sender, packet)`` before it handles each RTCP packet it gets."""
    _hooks["rtcp_send"], _hooks["rtcp_receive"] = on_send, on_receive
    orig_send = RTCRtpSender._send_rtcp
    if not _marked(orig_send):

        @functools.wraps(orig_send)
        async def _send_rtcp(self: RTCRtpSender, packets: list[Any]) -> None:
            _hooks["rtcp_send"](self, packets)
            await orig_send(self, packets)

        setattr(_send_rtcp, _MARK, True)
        RTCRtpSender._send_rtcp = _send_rtcp  # type: ignore[method-assign]

    orig_handle = RTCRtpSender._handle_rtcp_packet
    if not _marked(orig_handle):

        @functools.wraps(orig_handle)
        async def _handle_rtcp_packet(self: RTCRtpSender, packet: Any) -> None:
            _hooks["rtcp_receive"](self, packet)
            await orig_handle(self, packet)

        setattr(_handle_rtcp_packet, _MARK, True)
        RTCRtpSender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]


# ------------------------------------------------------------------------------ 5. audio level
# ``RTCRtpSender._next_encoded_frame`` calls ``aiortc.rtp.compute_audio_level_dbov(frame)``
# (looked up at call time) for every audio frame: a pure-Python loop over the samples that
# costs about as much as the Opus encode. Replacing the module attribute is enough.

#: aiortc's own ``compute_audio_level_dbov``, as found at import (before any replacement)
AIORTC_COMPUTE_AUDIO_LEVEL_DBOV: Callable[[Any], int] = getattr(
    aiortc.rtp.compute_audio_level_dbov, "original", aiortc.rtp.compute_audio_level_dbov
)


def patch_audio_level(replacement: Callable[[Any], int]) -> None:
    """Make aiortc's sender use ``replacement`` for the level of every audio frame."""
    if aiortc.rtp.compute_audio_level_dbov is not replacement:
        aiortc.rtp.compute_audio_level_dbov = replacement  # type: ignore[assignment]


# --------------------------------------------------------------------------- 6. jitter buffer
# aiortc's audio receiver waits for 4 later frames before it hands one out and, after a loss,
# for 16, a backlog it never drains (aiortc issue 543). The buffer is a private attribute set
# in ``RTCRtpReceiver.__init__`` and only used through ``add(packet)`` in
# ``_handle_rtp_packet``, so a replacement with the same ``add`` can be set per receiver (raw
# aiortc peers in the same process keep theirs).

_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"


def jitter_buffer(receiver: Any) -> Any:
    """The jitter buffer an aiortc ``RTCRtpReceiver`` reassembles frames with."""
    return getattr(receiver, _JITTER_ATTR)


def receiver_codecs(receiver: Any) -> dict[int, Any]:
    """The codecs an aiortc ``RTCRtpReceiver`` decodes, by payload type (``__codecs``, set by
    ``receive()``; empty before)."""
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None)
    if codecs is None:
        raise RuntimeError("aiortc's RTCRtpReceiver has no _RTCRtpReceiver__codecs any more")
    return dict(codecs)


def use_jitter_buffer(receiver: Any, buffer: Any) -> None:
    """Make ``receiver`` reassemble its frames with ``buffer`` (anything with aiortc's
    ``add(packet) -> (pli_flag, JitterFrame | None)``); before its first packet."""
    if not hasattr(receiver, _JITTER_ATTR):
        raise RuntimeError(f"aiortc's RTCRtpReceiver has no {_JITTER_ATTR} any more")
    setattr(receiver, _JITTER_ATTR, buffer)


# ------------------------------------------------------------------ 7. mDNS end-of-candidates
# A browser hides its host addresses behind mDNS names (``<uuid>.local``) that aioice cannot
# resolve unless it shares the browser's link; it learns the browser's address from its checks
# instead, as a peer-reflexive candidate (RFC 8445 section 7.3.1.3). aioice 0.13 handles
# end-of-candidates before any of those arrive as "the remote side has no candidates at all":
# ``_prune_components`` drops every component (an answerer then gathers no local candidate,
# and an offerer never counts its nominated pair as complete: "ICE failed" although the pair
# succeeded), and ``connect()`` stops waiting because ``_remote_candidates_expected`` is
# False. Until a first remote candidate is known (resolved, signalled or peer-reflexive), both
# now behave as before end-of-candidates; callkit's connect watchdog bounds that wait.


def patch_mdns_end_of_candidates() -> None:
    """Keep aioice's components and its wait for checks while no remote candidate is known."""
    orig_prune = Connection._prune_components
    if not _marked(orig_prune):

        @functools.wraps(orig_prune)
        def _prune_components(self: Connection) -> None:
            if self._remote_candidates:
                orig_prune(self)

        setattr(_prune_components, _MARK, True)
        Connection._prune_components = _prune_components  # type: ignore[method-assign]

    orig_expected = Connection._remote_candidates_expected
    if not _marked(orig_expected):

        @functools.wraps(orig_expected)
        def _remote_candidates_expected(self: Connection) -> bool:
            return not self._remote_candidates or orig_expected(self)

        setattr(_remote_candidates_expected, _MARK, True)
        Connection._remote_candidates_expected = _remote_candidates_expected  # type: ignore[method-assign]


# --------------------------------------------------------------------------- 8. shared encoder
# Each ``RTCRtpSender`` makes its own encoder (``self.__encoder = get_encoder(codec)``) in
# ``_next_encoded_frame``, so a source sent to N peers is encoded N times. ``_run_rtp`` only
# calls ``self._next_encoded_frame(codec)`` and turns the ``RTCEncodedFrame`` into RTP packets
# with the sender's own sequence numbers, timestamp origin and SSRC; ``_handle_rtcp_packet``
# calls ``self._send_keyframe()`` on PLI / FIR and sets ``self.__encoder.target_bitrate`` on
# REMB. All three are replaced per sender (raw aiortc senders in the process keep theirs).

_ENCODER_ATTR = "_RTCRtpSender__encoder"


def use_shared_encoder(sender: RTCRtpSender, encoder: Any) -> None:
    """Make ``sender`` encode with ``encoder`` instead of its own: each frame read from its
    track goes to ``await encoder.encode(frame, codec)`` (``(payloads, timestamp)``, or None
    to skip the frame), PLI / FIR call ``encoder.request_keyframe()`` and REMB sets
    ``encoder.target_bitrate``. Before the sender starts."""
    for name in ("_next_encoded_frame", "_send_keyframe", _ENCODER_ATTR, "_enabled"):
        if not hasattr(sender, name):
            raise RuntimeError(f"aiortc's RTCRtpSender has no {name} any more")

    async def _next_encoded_frame(codec: Any) -> RTCEncodedFrame | None:
        track = sender.track
        if track is None:  # replaced by None between aiortc's check and this call
            return None
        data = await track.recv()
        if not sender._enabled:  # a disabled sender reads and drops, as aiortc's does
            return None
        if not isinstance(data, Frame):
            raise TypeError(f"a shared encoder takes frames, not {type(data).__name__}")
        level = aiortc.rtp.compute_audio_level_dbov(data) if isinstance(data, AudioFrame) else None
        encoded = await encoder.encode(data, codec)
        if encoded is None or not encoded[0]:
            return None
        return RTCEncodedFrame(encoded[0], encoded[1], level)  # type: ignore[arg-type]

    sender._next_encoded_frame = _next_encoded_frame  # type: ignore[method-assign]
    sender._send_keyframe = encoder.request_keyframe  # type: ignore[method-assign]
    setattr(sender, _ENCODER_ATTR, encoder)  # REMB: encoder.target_bitrate = bitrate


def shared_encoder(sender: RTCRtpSender) -> Any:
    """What ``sender`` encodes with: the object given to :func:`use_shared_encoder`, else
    aiortc's own encoder (None before its first frame and after it stopped)."""
    return getattr(sender, _ENCODER_ATTR, None)


def opus_inband_fec(encoder: Any, packet_loss: int) -> None:
    """Make aiortc's ``OpusEncoder`` (before its first encode) put in-band FEC (LBRR) in its
    packets, planned for ``packet_loss`` % loss: libopus's ``fec`` and ``packet_loss`` options
    on its PyAV ``codec``, which opens at the first encode."""
    codec = getattr(encoder, "codec", None)
    if codec is None or not hasattr(codec, "options") or codec.is_open:
        raise RuntimeError("aiortc's OpusEncoder has no unopened PyAV codec any more")
    codec.options = {**codec.options, "fec": "1", "packet_loss": str(int(packet_loss))}


# ----------------------------------------------------------------------------- 9. private reads


def ice_connection(ice_transport: Any) -> Connection | None:
    """The aioice Connection under an aiortc ``RTCIceTransport``
    (``RTCIceGatherer._connection``)."""
    conn = getattr(getattr(ice_transport, "iceGatherer", None), "_connection", None)
    return conn if isinstance(conn, Connection) else None


def pc_ice_transports(pc: Any) -> Iterable[Any]:
    """Every ``RTCIceTransport`` of an ``RTCPeerConnection`` (its private set, which also holds
    transports no transceiver points at any more)."""
    return tuple(getattr(pc, "_RTCPeerConnection__iceTransports", ()) or ())


def nominated_pairs(conn: Connection) -> list[CandidatePair]:
    """The nominated candidate pairs of an aioice Connection (``_nominated``, per component);
    empty before ICE completes."""
    return list(getattr(conn, "_nominated", {}).values())


def sender_ssrc(sender: RTCRtpSender) -> int | None:
    """The SSRC an ``RTCRtpSender`` sends with (``_ssrc``)."""
    return getattr(sender, "_ssrc", None)


#: ``aiortc.rtcicetransport.parse_stun_turn_uri`` (a module function outside aiortc's API):
#: ``{"scheme", "host", "port", "transport"?}`` from a ``stun:`` / ``turn:`` / ``turns:`` URL
parse_stun_turn_uri: Callable[[str], dict[str, Any]] = _parse_stun_turn_uri


# ---------------------------------------------------------------- 10. direct pairs before relay
# aioice 0.13 nominates aggressively: the controlling agent puts USE-CANDIDATE on every check
# (``check_start``: ``nominate = self.ice_controlling and not self.remote_is_lite``), so the
# first pair whose check succeeds is selected (``check_complete``) and the other checks are
# cancelled. A relay pair that answers first (a loaded machine, a NAT that drops the first
# direct check until the other side has sent its own) beats a direct pair that would have
# succeeded a moment later; libwebrtc instead settles and re-nominates. Here the controlling
# agent checks relay pairs without USE-CANDIDATE (``build_request``) and does not select one
# that succeeded (``check_complete``) while a direct pair of the component is still pending
# or more remote candidates are expected, for at most RELAY_SETTLE s after the first relay
# pair succeeded; then the best succeeded relay pair is checked again with USE-CANDIDATE
# (aioice's own ``check_start``, so the controlled side selects it too). Meanwhile
# ``_check_list_maybe_fail`` does not fail a check list that has a succeeded relay pair.
# A direct pair's checks keep aggressive nomination: it is selected as soon as it succeeds.

#: how long after its first relay pair succeeded the controlling agent still waits for a
#: direct pair (covers aioice's first two STUN retransmissions, at 0.5 s and 1.5 s)
RELAY_SETTLE = 1.5

_PENDING = (
    CandidatePair.State.FROZEN,
    CandidatePair.State.WAITING,
    CandidatePair.State.IN_PROGRESS,
)


@dataclass(eq=False)
class _RelayHold:
    """One Connection's held relay pairs (checked without USE-CANDIDATE) and its settle timer."""

    held: set[CandidatePair] = field(default_factory=set)
    released: set[CandidatePair] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    expired: bool = False


_relay_holds: weakref.WeakKeyDictionary[Connection, _RelayHold] = weakref.WeakKeyDictionary()


def is_relay_pair(pair: CandidatePair) -> bool:
    """Whether either end of an aioice candidate pair is a TURN relay candidate."""
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _settle_expired(conn: Connection) -> None:
    hold = _relay_holds.get(conn)
    if hold is not None:
        hold.timer, hold.expired = None, True
        _release_relay(conn)


def _release_relay(conn: Connection) -> bool:
    """Nominate the best succeeded held relay pair of each component that may not wait any
    longer; True while ``conn`` has a succeeded held relay pair (its check list must not
    fail)."""
    hold = _relay_holds.get(conn)
    if hold is None or conn._check_list_done or not conn.ice_controlling:
        return False
    done = CandidatePair.State.SUCCEEDED
    ready = [p for p in conn._check_list if p in hold.held and p.state == done]
    if not ready:
        return False
    waiting = not hold.expired and conn._remote_candidates_expected()
    for component in {p.component for p in ready} - set(conn._nominated):
        mine = [p for p in conn._check_list if p.component == component]
        if any(p in hold.released and p.state in _PENDING for p in mine):
            continue  # its nominating check is under way
        direct_pending = any(not is_relay_pair(p) and p.state in _PENDING for p in mine)
        if waiting or (direct_pending and not hold.expired):
            continue
        best = next(p for p in ready if p.component == component)  # the list is sorted
        hold.released.add(best)
        conn.check_start_task(best)
    return True


def patch_relay_nomination(settle: float = RELAY_SETTLE) -> None:
    """Make a controlling aioice agent prefer direct pairs: a relay pair is nominated only
    once no direct pair can succeed any more, or ``settle`` s after the first relay pair
    succeeded (see the comment above)."""
    _hooks["relay_settle"] = settle
    orig_build = Connection.build_request
    if not _marked(orig_build):

        @functools.wraps(orig_build)
        def build_request(self: Connection, pair: CandidatePair, nominate: bool) -> Any:
            if nominate and self.ice_controlling and is_relay_pair(pair):
                hold = _relay_holds.setdefault(self, _RelayHold())
                if not hold.expired and pair not in hold.released:
                    hold.held.add(pair)
                    nominate = False
            return orig_build(self, pair, nominate)

        setattr(build_request, _MARK, True)
        Connection.build_request = build_request  # type: ignore[method-assign]

    orig_complete = Connection.check_complete
    if not _marked(orig_complete):

        @functools.wraps(orig_complete)
        def check_complete(self: Connection, pair: CandidatePair) -> None:
            hold = _relay_holds.get(self)
            if (
                hold is not None
                and pair.state == CandidatePair.State.SUCCEEDED
                and pair.nominated
                and pair in hold.held
                and pair not in hold.released
                and not pair.remote_nominated
            ):
                pair.nominated = False  # checked without USE-CANDIDATE: not nominated
                if hold.timer is None and not hold.expired:
                    loop = asyncio.get_running_loop()
                    hold.timer = loop.call_later(_hooks["relay_settle"], _settle_expired, self)
            orig_complete(self, pair)

        setattr(check_complete, _MARK, True)
        Connection.check_complete = check_complete  # type: ignore[method-assign]

    orig_fail = Connection._check_list_maybe_fail
    if not _marked(orig_fail):

        @functools.wraps(orig_fail)
        def _check_list_maybe_fail(self: Connection) -> None:
            if not _release_relay(self):
                orig_fail(self)

        setattr(_check_list_maybe_fail, _MARK, True)
        Connection._check_list_maybe_fail = _check_list_maybe_fail  # type: ignore[method-assign]


# ------------------------------------------------------------------ 11. direct SRTP delivery
# aioice's ``StunProtocol.datagram_received`` first tries every datagram as STUN
# (``stun.parse_message`` raises ValueError for RTP), then ``Connection.data_received`` puts
# it on the connection's unbounded ``asyncio.Queue``; aiortc's ``RTCDtlsTransport.__run`` task
# awaits ``_recv_next`` -> ``transport._recv()`` (``Connection.recv``) and dispatches: DTLS
# records to OpenSSL, SRTP / SRTCP (first byte 128..191, RFC 7983) to
# ``_rx_srtp.unprotect[_rtcp]`` then ``_handle_rtp_data`` / ``_handle_rtcp_data``. That is a
# queue put, a task wake-up and a coroutine chain per packet. Here, per connection, an object
# takes the place of ``Connection.data_received``: once the DTLS transport is CONNECTED with
# its SRTP session, it unprotects and dispatches SRTP / SRTCP synchronously, as aiortc's
# ``_recv_next`` would (same byte / packet counters, same handlers: they only await sends,
# which complete at once, so the coroutine is stepped in place; one that does suspend, e.g. a
# first TURN ChannelBind, finishes in a task). Everything else (DTLS, before the keys, other
# bytes) still goes to the queue and aiortc's task; an empty datagram, which makes aiortc's
# ``_recv_next`` raise IndexError and close the transport, is dropped, and so is a datagram
# that finds :data:`MAX_QUEUED` already waiting on the queue (aioice's is unbounded: bogus
# non-SRTP bytes faster than the loop reads them would grow it without limit).

_RX_BYTES = "_RTCDtlsTransport__rx_bytes"
_RX_PACKETS = "_RTCDtlsTransport__rx_packets"
#: datagrams that may wait on a directly delivering connection's queue (DTLS flights are a
#: few datagrams; SRTP does not wait there)
MAX_QUEUED = 64
#: seconds between 1900-01-01 (NTP) and 1970-01-01 (Unix)
_NTP_UNIX_S = 2208988800


def _ntp_ms() -> int:
    """``aiortc.clock.current_ms()`` (ms since the NTP epoch) from one ``time_ns`` call."""
    return time.time_ns() // 1_000_000 + _NTP_UNIX_S * 1000


class _DirectSrtp:
    """Stands for one aioice Connection's ``data_received`` (see the comment above)."""

    __slots__ = ("__weakref__", "_dtls", "_queue", "_queued", "dropped", "errors", "handled")

    def __init__(self, dtls: Any, conn: Connection) -> None:
        self._dtls = dtls
        self._queued = conn.data_received
        self._queue = conn._queue
        #: SRTP / SRTCP datagrams handled here, those whose handler raised, and datagrams
        #: dropped (empty, or the queue full)
        self.handled = 0
        self.errors = 0
        self.dropped = 0

    def __call__(self, data: bytes, component: int) -> None:
        if not data or self._queue.qsize() >= MAX_QUEUED:
            self.dropped += 1  # aiortc's _recv_next would die on data[0]
        elif 127 < data[0] < 192:
            self.srtp(data)
        else:
            self._queued(data, component)

    def srtp(self, data: bytes) -> None:
        """Handle one SRTP / SRTCP datagram now (dropped before the keys, as aiortc does)."""
        dtls = self._dtls
        rx = dtls._rx_srtp
        if rx is None or dtls._state is not DtlsState.CONNECTED:
            self.dropped += 1
            return
        setattr(dtls, _RX_BYTES, getattr(dtls, _RX_BYTES) + len(data))
        setattr(dtls, _RX_PACKETS, getattr(dtls, _RX_PACKETS) + 1)
        self.handled += 1
        try:
            if len(data) >= 2 and 192 <= data[1] <= 208:  # aiortc.rtp.is_rtcp
                coro = dtls._handle_rtcp_data(rx.unprotect_rtcp(data))
            else:
                plain = rx.unprotect(data)
                if len(plain) >= 12:  # a lean receiver (13.) takes its own packets
                    ssrc = int.from_bytes(plain[8:12], "big")
                    lean = getattr(dtls._rtp_router.ssrc_table.get(ssrc), _LEAN_ATTR, None)
                    if lean is not None and lean(plain):
                        return
                coro = dtls._handle_rtp_data(plain, arrival_time_ms=_ntp_ms())
        except pylibsrtp.Error:
            return  # forged, replayed or damaged: aiortc drops it too
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:
            self.errors += 1
            log.exception("SRTP handler failed; packet dropped")
            return
        task = asyncio.get_running_loop().create_task(_finish(coro, yielded))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)


#: handlers that suspended (kept until they finish)
_finishing: set[asyncio.Task[Any]] = set()


async def _finish(coro: Any, yielded: Any) -> None:
    """Run the rest of a coroutine already stepped once (it yielded ``yielded``), as
    ``await`` would (PEP 380: values sent and exceptions thrown go through)."""
    try:
        await _Resume(coro, yielded)
    except Exception:
        log.exception("SRTP handler failed")


class _Resume:
    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro, self._first = coro, first

    def __await__(self) -> Any:
        coro, yielded = self._coro, self._first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task (cancel): pass it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def _stun_demux(orig: Callable[[StunProtocol, Any, Any], None]) -> Any:
    """aioice's ``StunProtocol.datagram_received``, except that an RTP / RTCP datagram for a
    connection delivering SRTP directly skips the attempt to parse it as STUN (a STUN
    message's first two bits are zero)."""

    def datagram_received(self: StunProtocol, data: Any, addr: Any) -> None:
        direct = self.receiver.data_received
        if type(direct) is _DirectSrtp and data and 127 < data[0] < 192:
            direct.srtp(data)
        else:
            orig(self, data, addr)

    return datagram_received


def deliver_srtp_directly(dtls: RTCDtlsTransport) -> None:
    """Make ``dtls`` (an aiortc ``RTCDtlsTransport``) get its SRTP / SRTCP straight from its
    ICE connection's socket (see the comment above); idempotent, any time before or after
    it connects. Raw aiortc transports in the process keep aiortc's queue."""
    conn = ice_connection(dtls.transport)
    if conn is None:
        raise RuntimeError("aiortc's RTCDtlsTransport has no aioice Connection any more")
    for name in (_RX_BYTES, _RX_PACKETS, "_rx_srtp", "_state", "_handle_rtp_data"):
        if not hasattr(dtls, name):
            raise RuntimeError(f"aiortc's RTCDtlsTransport has no {name} any more")
    if not isinstance(getattr(conn, "_queue", None), asyncio.Queue):
        raise RuntimeError("aioice's Connection has no _queue any more")
    if type(conn.data_received) is not _DirectSrtp:
        conn.data_received = _DirectSrtp(dtls, conn)  # type: ignore[method-assign]


def delivers_srtp_directly(dtls: RTCDtlsTransport) -> _DirectSrtp | None:
    """The direct path of ``dtls`` (its counters ``handled`` / ``errors``), None if it has
    none."""
    conn = ice_connection(dtls.transport)
    direct = conn.data_received if conn is not None else None
    return direct if type(direct) is _DirectSrtp else None


# ------------------------------------------------------------------------------- 12. clock
# aiortc's ``clock.current_ms()`` and ``current_ntp_time()`` build a ``datetime.now(utc)``,
# subtract the NTP epoch and convert the ``timedelta`` (about 1.7 and 2.1 us); the sender calls
# ``current_ntp_time`` twice per RTP packet (abs-send-time, SR timestamp) and the receive path
# ``current_ms`` once per packet. Both are module functions looked up at call time.


def _ntp_time() -> int:
    """``aiortc.clock.current_ntp_time()``: 64-bit NTP time (32.32 fixed point), from the
    same microseconds ``datetime.now`` would give."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    return ((seconds + _NTP_UNIX_S) << 32) | ((micros << 32) // 1_000_000)


setattr(_ntp_ms, _MARK, True)
setattr(_ntp_time, _MARK, True)


def patch_clock() -> None:
    """Make aiortc's ``clock.current_ms`` / ``current_ntp_time`` the ``time_ns`` ones
    (idempotent; global: every peer connection in the process uses them)."""
    aiortc.clock.current_ms = _ntp_ms  # type: ignore[assignment]
    aiortc.clock.current_ntp_time = _ntp_time  # type: ignore[assignment]


# ------------------------------------------------------------------- 13. lean audio RTP
# For an SSRC the transport's ``RtpRouter`` already routes to a receiver (its ``ssrc_table``,
# filled by aiortc's ``route_rtp`` at the stream's first packet), the direct path (11.) hands
# the plain RTP to that receiver's lean handler, if it has one. For an Opus payload type of
# the receiver's, it does what ``_handle_rtp_packet`` does for audio, minus what audio does
# not use: reads the fixed header in place (the header extensions are skipped: aiortc's audio
# receiver reads none of them; CSRCs and padding are honoured), notes the SSRC as active with a
# ``datetime`` at most every ``ACTIVE_EVERY`` s (``getSynchronizationSources`` reads it; it
# was one ``datetime.now`` per packet), feeds aiortc's ``StreamStatistics`` (receiver reports
# and ``getStats``), and gives the packet (Opus payloads are not depayloaded) to the
# receiver's jitter buffer, callkit's ``AudioReceiver``. Anything else (another payload type,
# a malformed header, a disabled receiver's packets are dropped as aiortc does) goes aiortc's
# way.

_LEAN_ATTR = "_callkit_lean_rtp"
#: how stale ``RTCRtpReceiver.getSynchronizationSources()`` timestamps may be (s)
ACTIVE_EVERY = 0.1
_RTP_FIXED = struct.Struct("!HII")


class _LeanPacket:
    """The fields of an RTP packet that aiortc's statistics and callkit's jitter buffer read."""

    __slots__ = (
        "_data",
        "marker",
        "payload",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(
        self,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
        marker: int,
    ) -> None:
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload
        self._data = payload
        self.marker = marker


class _LeanAudioRtp:
    """One receiver's lean RTP handler (see the comment above)."""

    __slots__ = (
        "_active",
        "_active_at",
        "_codecs",
        "_jitter",
        "_opus",
        "_receiver",
        "_streams",
        "handled",
    )

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc
        self._codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs
        self._streams: dict[int, Any] = receiver._RTCRtpReceiver__remote_streams
        self._jitter = getattr(receiver, _JITTER_ATTR)
        self._opus: dict[int, bool] = {}
        self._active_at = 0.0
        #: packets handled here
        self.handled = 0

    def __call__(self, data: bytes) -> bool:
        """Handle one plain RTP packet; False: not ours to handle, aiortc's path takes it."""
        b0, pt = data[0], data[1] & 0x7F
        opus = self._opus.get(pt)
        if opus is None:
            codec = self._codecs.get(pt)
            if codec is None:
                return False
            opus = self._opus[pt] = codec.mimeType.lower() == "audio/opus"
        if not opus or b0 >> 6 != 2:
            return False
        start = 12 + 4 * (b0 & 0x0F)
        end = len(data)
        if b0 & 0x10:  # header extension: skipped
            if end < start + 4:
                return False
            start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
        if b0 & 0x20:  # padding: its length is the last byte (0 is invalid, as for aiortc)
            if not data[-1]:
                return False
            end -= data[-1]
        if start > end:
            return False
        receiver = self._receiver
        self.handled += 1
        if not receiver._enabled:
            return True
        seq, timestamp, ssrc = _RTP_FIXED.unpack_from(data, 2)
        packet = _LeanPacket(pt, seq, timestamp, ssrc, data[start:end], data[1] >> 7)
        now = time.monotonic()
        if now - self._active_at >= ACTIVE_EVERY or ssrc not in self._active:
            self._active_at = now
            self._active[ssrc] = aiortc.clock.current_datetime()
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = StreamStatistics(self._codecs[pt].clockRate)
        stream.add(packet)  # type: ignore[arg-type]  # reads sequence_number, timestamp
        self._jitter.add(packet)
        return True


def lean_audio_rtp(receiver: Any) -> _LeanAudioRtp:
    """Give an aiortc audio ``RTCRtpReceiver`` (whose jitter buffer is callkit's, see 6.) the
    lean RTP handler of its transport's direct path (see the comment above); idempotent.
    Returns it (its counter ``handled``)."""
    lean = getattr(receiver, _LEAN_ATTR, None)
    if isinstance(lean, _LeanAudioRtp):
        return lean
    for name in ("active_ssrc", "codecs", "remote_streams", "jitter_buffer"):
        if not hasattr(receiver, f"_RTCRtpReceiver__{name}"):
            raise RuntimeError(f"aiortc's RTCRtpReceiver has no __{name} any more")
    if not hasattr(receiver, "_enabled"):
        raise RuntimeError("aiortc's RTCRtpReceiver has no _enabled any more")
    lean = _LeanAudioRtp(receiver)
    setattr(receiver, _LEAN_ATTR, lean)
    return lean


# ------------------------------------------------------------------------------ 14. pushed RTP
# ``RTCRtpSender.send()`` starts ``self._run_rtp(codec)`` as a task: it awaits
# ``_next_encoded_frame`` (``track.recv()``, one queue and task wake-up per sender per frame),
# then packetizes with its own sequence numbers, random timestamp origin and SSRC, keeps each
# packet in ``__rtp_history`` (NACK), updates the counters its RTCP SR reports and awaits
# ``transport._send_rtp`` (SRTP protect, ``sendto``: it suspends only when a TURN relay
# must first bind a channel, and then later packets wait behind it). ``push_rtp``
# replaces ``_run_rtp`` per sender by a task that mostly sleeps: while the sender's track can
# push, the source calls :meth:`RtpWriter.write` from its own tick; otherwise frames are read
# and packetized as aiortc does (``_retransmit`` is aiortc's behind a rate bound, see
# MAX_RETRANSMITS_PER_S). The RTCP task, ``stop()`` and the stats are
# aiortc's own, reading the same private state.

_SENDER = "_RTCRtpSender__"
#: per sender given to :func:`push_rtp`: its ``attach`` hook and current writer
_push_hooks: weakref.WeakKeyDictionary[RTCRtpSender, dict[str, Any]] = weakref.WeakKeyDictionary()


#: retransmissions a pushed sender makes per second at most (the rest of the NACKs are
#: ignored): aiortc retransmits every sequence number an RTCP NACK lists that its 128-packet
#: history still holds, so a peer flooding NACKs would make the shared loop send without
#: limit; audio at 50 packets/s never needs more (aiortc does not even negotiate NACK for it)
MAX_RETRANSMITS_PER_S = 50

#: packets one writer keeps, in order, while a send is suspended (a first send through a TURN
#: relay awaits its ChannelBind); more are dropped
MAX_SUSPENDED = 50


class RtpWriter:
    """Packetizes encoded frames into one ``RTCRtpSender``'s RTP stream, as its ``_run_rtp``
    would: same SSRC, sequence numbers, timestamp origin, history and SR counters."""

    def __init__(self, sender: RTCRtpSender, codec: Any) -> None:
        self.sender = sender
        self.codec = codec
        self._payload_type = codec.payloadType
        self._sequence_number = random_sequence_number()
        self._timestamp_origin = random32()
        self._history: dict[int, RtpPacket] = getattr(sender, _SENDER + "rtp_history")
        self._extensions = getattr(sender, _SENDER + "rtp_header_extensions_map")
        self._mid = getattr(sender, _SENDER + "mid")
        # the header extensions of an audio packet depend on its level only, unless the map
        # writes abs-send-time (aiortc negotiates it for video only): then aiortc serializes
        _, with_time = self._extensions.set(HeaderExtensions(abs_send_time=1))
        self._header_tails: dict[int | None, bytes] | None = None if with_time else {}
        self._wake = asyncio.Event()
        self._backlog: collections.deque[bytes] | None = None  # while a send is suspended
        self._draining: asyncio.Task[None] | None = None
        #: why pushing ended the sender (set by :meth:`fail`), None while it works
        self.error: BaseException | None = None
        #: packets written, and packets dropped because too many sends were suspended
        self.packets = 0
        self.dropped = 0

    def write(self, payloads: list[bytes], timestamp: int, audio_level: int | None) -> None:
        """Send one encoded frame now (``audio_level`` in aiortc's convention, -127..0).
        Raises ``ConnectionError`` when the DTLS transport is not connected (aiortc's
        ``_run_rtp`` ends the sender on it)."""
        sender = self.sender
        transport = sender.transport
        timestamp = uint32_add(self._timestamp_origin, timestamp)
        abs_send_time = (aiortc.clock.current_ntp_time() >> 14) & 0x00FFFFFF
        last = len(payloads) - 1
        octets = 0
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=self._payload_type,
                sequence_number=self._sequence_number,
                timestamp=timestamp,
            )
            packet.ssrc = sender._ssrc
            packet.payload = payload
            packet.marker = 1 if i == last else 0
            packet.extensions.abs_send_time = abs_send_time
            packet.extensions.mid = self._mid
            if audio_level is not None:
                packet.extensions.audio_level = (False, -audio_level)
            self._history[packet.sequence_number % RTP_HISTORY_SIZE] = packet
            self._send(transport, self._serialize(packet, audio_level))
            octets += len(payload)
            self._sequence_number = uint16_add(self._sequence_number, 1)
        if payloads:
            self.packets += len(payloads)
            setattr(sender, _SENDER + "ntp_timestamp", aiortc.clock.current_ntp_time())
            setattr(sender, _SENDER + "rtp_timestamp", timestamp)
            setattr(
                sender, _SENDER + "octet_count", getattr(sender, _SENDER + "octet_count") + octets
            )
            setattr(
                sender,
                _SENDER + "packet_count",
                getattr(sender, _SENDER + "packet_count") + len(payloads),
            )

    def _serialize(self, packet: RtpPacket, audio_level: int | None) -> bytes:
        """``packet.serialize(extensions map)``, with the extension bytes made once per level."""
        tails = self._header_tails
        if tails is None:
            return packet.serialize(self._extensions)
        tail = tails.get(audio_level)
        if tail is None:
            profile, value = self._extensions.set(packet.extensions)
            tail = tails[audio_level] = (
                struct.pack("!HH", profile, len(value) >> 2) + value if value else b""
            )
        first = 0x90 if tail else 0x80  # version 2, no padding, extension bit, no CSRC
        return (
            struct.pack(
                "!BBHLL",
                first,
                (packet.marker << 7) | packet.payload_type,
                packet.sequence_number,
                packet.timestamp,
                packet.ssrc,
            )
            + tail
            + packet.payload
        )

    def _send(self, transport: Any, data: bytes) -> None:
        """``transport._send_rtp(data)`` stepped in place (SRTP protect and ``sendto`` never
        suspend); if it does suspend, it finishes in a task and later packets wait behind it
        (at most :data:`MAX_SUSPENDED`), so they leave in order."""
        backlog = self._backlog
        if backlog is not None:
            if len(backlog) < MAX_SUSPENDED:
                backlog.append(data)
            else:
                self.dropped += 1
            return
        coro = transport._send_rtp(data)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        self._backlog = collections.deque()
        self._draining = asyncio.get_running_loop().create_task(
            self._drain(transport, coro, yielded)
        )

    async def _drain(self, transport: Any, coro: Any, yielded: Any) -> None:
        try:
            await _Resume(coro, yielded)
            while self._backlog:
                await transport._send_rtp(self._backlog.popleft())
        except Exception as exc:  # ConnectionError: closed, as in write()
            self.fail(exc)
        finally:
            self._backlog = None

    @property
    def enabled(self) -> bool:
        """False while the sender is disabled (aiortc reads and drops its frames then)."""
        return bool(self.sender._enabled)

    def wake(self) -> None:
        """The sender's track changed or ended: its RTP task looks again."""
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        """Pushing failed (``ConnectionError``: the transport closed): end the sender's RTP
        as aiortc's ``_run_rtp`` ends on an error; the source keeps serving the others."""
        if self.error is None:
            self.error = error
        self._wake.set()


#: ``attach(writer, track)``: make ``track`` push into ``writer`` and return the function that
#: stops it, or None if the track cannot push (its frames are then read and sent as aiortc does)
PushAttach = Callable[[RtpWriter, Any], "Callable[[], None] | None"]


def push_rtp(sender: RTCRtpSender, attach: PushAttach) -> None:
    """Replace ``sender``'s RTP task (before ``send()``): while ``attach(writer, track)`` makes
    its track push, the task sleeps until the track is replaced or ends, or the writer fails;
    other tracks are read frame by frame through ``sender._next_encoded_frame``. Its NACK
    retransmissions are bounded (:data:`MAX_RETRANSMITS_PER_S`)."""
    for name in ("_run_rtp", "_next_encoded_frame", "replaceTrack", "_retransmit"):
        if not hasattr(sender, name):
            raise RuntimeError(f"aiortc's RTCRtpSender has no {name} any more")
    for name in ("rtp_history", "rtp_header_extensions_map", "mid", "rtp_started", "rtp_exited"):
        if not hasattr(sender, _SENDER + name):
            raise RuntimeError(f"aiortc's RTCRtpSender has no {_SENDER}{name} any more")
    hooks = _push_hooks.get(sender)
    if hooks is not None:
        hooks["attach"] = attach
        return
    hooks = _push_hooks[sender] = {"attach": attach, "writer": None}
    orig_replace = sender.replaceTrack

    def replaceTrack(track: Any) -> None:
        orig_replace(track)
        writer = hooks["writer"]
        if writer is not None:
            writer.wake()

    async def _run_rtp(codec: Any) -> None:
        getattr(sender, _SENDER + "rtp_started").set()
        writer = hooks["writer"] = RtpWriter(sender, codec)
        try:
            while True:
                track = sender.track
                if track is None:
                    await asyncio.sleep(0.02)
                    continue
                if track.readyState != "live":
                    raise MediaStreamError
                writer._wake.clear()
                detach = hooks["attach"](writer, track)
                if detach is None:
                    frame = await sender._next_encoded_frame(codec)
                    if frame is not None:
                        writer.write(frame.payloads, frame.timestamp, frame.audio_level)
                    continue
                try:
                    await writer._wake.wait()
                finally:
                    detach()
                if writer.error is not None:
                    raise writer.error
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            log.warning("RTCRtpSender(%s) %s", sender.kind, traceback.format_exc())
        hooks["writer"] = None
        if writer._draining is not None:
            writer._draining.cancel()
        track = sender.track
        if track is not None:  # as aiortc: the track is stopped and dropped, the encoder too
            track.stop()
            setattr(sender, _SENDER + "track", None)
        setattr(sender, _SENDER + "encoder", None)
        getattr(sender, _SENDER + "rtp_exited").set()

    setattr(_run_rtp, _MARK, True)
    orig_retransmit = sender._retransmit
    budget = [float(MAX_RETRANSMITS_PER_S), time.monotonic()]  # tokens, last refill

    async def _retransmit(sequence_number: int) -> None:
        now = time.monotonic()
        tokens = min(MAX_RETRANSMITS_PER_S, budget[0] + (now - budget[1]) * MAX_RETRANSMITS_PER_S)
        budget[1] = now
        if tokens < 1:
            budget[0] = tokens
            hooks["refused_retransmits"] += 1
            return
        budget[0] = tokens - 1
        await orig_retransmit(sequence_number)

    hooks["refused_retransmits"] = 0
    sender._run_rtp = _run_rtp  # type: ignore[method-assign]
    sender.replaceTrack = replaceTrack  # type: ignore[method-assign]
    sender._retransmit = _retransmit  # type: ignore[method-assign]


def rtp_writer(sender: RTCRtpSender) -> RtpWriter | None:
    """The writer pushed into ``sender`` while its RTP task runs (see :func:`push_rtp`)."""
    hooks = _push_hooks.get(sender)
    return None if hooks is None else hooks["writer"]


# ------------------------------------------------------------------- 15. video decode in the loop
# aiortc's video receiver hands each frame its jitter buffer reassembles to a decoder thread of
# its own (``decoder_worker``: a ``queue.Queue`` in, ``run_coroutine_threadsafe`` onto the
# track's queue out). The jitter buffer is the private slot of 6.: a replacement whose ``add``
# never returns a frame leaves aiortc's thread idle, and callkit's ``VideoReceiver`` does the
# rest with aiortc's own parts: its video ``JitterBuffer(capacity=512, is_video=True)`` (as
# ``RTCRtpReceiver.__init__`` makes it), its ``TimestampMapper`` (as ``_handle_rtp_packet``
# maps each frame's timestamp before decoding) and its decoders (``get_decoder``).


def video_jitter_buffer() -> JitterBuffer:
    """A video jitter buffer made as aiortc's ``RTCRtpReceiver`` makes its own."""
    return JitterBuffer(capacity=512, is_video=True)


def timestamp_mapper() -> Any:
    """aiortc's ``TimestampMapper``: RTP timestamps from 0, across wraps (``.map(ts)``)."""
    return TimestampMapper()


def video_decoder(codec: Any) -> Any:
    """aiortc's decoder for ``codec`` (``decode(JitterFrame) -> list[VideoFrame]``)."""
    return get_decoder(codec)


def use_video_receiver(receiver: Any, path: Any) -> None:
    """Make an aiortc video ``receiver`` hand its RTP packets to ``path`` (aiortc's jitter
    buffer interface) instead of reassembling and decoding them itself; before its first
    packet. aiortc's decoder thread then never gets a frame."""
    if getattr(receiver, "_RTCRtpReceiver__kind", None) != "video":
        raise RuntimeError("use_video_receiver needs an aiortc video RTCRtpReceiver")
    use_jitter_buffer(receiver, path)


def decoder_backlog(receiver: Any) -> int:
    """Frames waiting for aiortc's own decoder thread of ``receiver`` (its private
    ``__decoder_queue``): 0 while callkit decodes."""
    backlog = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
    if backlog is None:
        raise RuntimeError("aiortc's RTCRtpReceiver has no _RTCRtpReceiver__decoder_queue any more")
    return int(backlog.qsize())
