"""The admin REST API and ``/metrics`` of the signaling server.

Every route but ``/health`` needs ``Authorization: Bearer <UserSig>`` where the UserSig is
valid for the user id ``administrator`` (as in TUICallKit's REST API; see adminauth.py); a
missing or wrong one gets 401. Errors are ``{"error": message, "code": int}`` with
TUICallKit's codes: 401 -1201, 400 and 404 -1202, 409 -1203, 503 (no records) -1205.

- ``GET /v1/calls/{callId}``: one record (live or ended) in TUICallKit's shape
- ``GET /v1/records?user=&since=&until=&result=&type=&page=&pageSize=``:
  ``{"records": [...], "total": N, "page": P}``, newest first (times in Unix ms)
- ``POST /v1/calls/{callId}/end``: end a live call (``callResult`` ``EndByServer``)
- ``DELETE /v1/records/{callId}``: delete an ended call's record
- ``GET /metrics``: Prometheus text format
- ``GET /calls``, ``GET /users/{userId}``: live calls and presence (the server's own)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import protocol as p
from .adminauth import admin_refusal
from .callstate import CallStateError
from .codes import ErrorCode
from .records.model import CallResult, CallType
from .records.store import RecordQuery, StoreError

if TYPE_CHECKING:
    from .server import SignalingServer

__all__ = ["AdminApi"]

MAX_PAGE_SIZE = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: the ``code`` of each HTTP error status (TUICallKit's client codes, as adminauth's 401)
_CODES = {
    400: ErrorCode.PARAM_INVALID,
    404: ErrorCode.PARAM_INVALID,
    409: ErrorCode.REQUEST_REFUSED,
    503: ErrorCode.SCENE_NOT_SUPPORTED,
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "code": int(_CODES[status])}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    body = {"error": message, "code": int(ErrorCode.PARAM_INVALID)}
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise _bad_request(f"{name} must be in {low}..{high}")
    return value


class AdminApi:
    """Routes of the admin API, bound to one :class:`SignalingServer`."""

    def __init__(self, server: SignalingServer) -> None:
        self.server = server

    # ------------------------------------------------------------------ auth

    def admin_only(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so that it answers 401 without an administrator UserSig."""

        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            server = self.server
            refusal = admin_refusal(
                request, server.sdk_app_id, server.secret_key, server.config.wall_clock()
            )
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except StoreError as exc:
                return _error(503, str(exc))

        return wrapped

    def add_routes(self, app: web.Application) -> None:
        """Add the ``/v1`` routes and ``/metrics`` to ``app``."""
        guard = self.admin_only
        app.router.add_get("/v1/calls/{call_id}", guard(self.get_call))
        app.router.add_post("/v1/calls/{call_id}/end", guard(self.end_call))
        app.router.add_get("/v1/records", guard(self.list_records))
        app.router.add_delete("/v1/records/{call_id}", guard(self.delete_record))
        app.router.add_get("/metrics", guard(self.metrics))

    # ------------------------------------------------------------------ handlers

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        record = await self.server.records.get(call_id)
        if record is None:
            return _error(404, f"no call {call_id!r:.80}")
        return web.json_response(record.to_json())

    async def end_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if not await self.server.end_call(call_id):
            return _error(404, f"no live call {call_id!r:.80}")
        return web.json_response({"callId": call_id, "ended": True})

    async def list_records(self, request: web.Request) -> web.Response:
        user = request.query.get("user")
        if user is not None and not p.valid_user_id(user):
            return _error(400, "user must be a valid user id")
        result = request.query.get("result")
        results = {r.value for r in CallResult if r.value}
        if result is not None and result not in results:
            return _error(400, f"result must be one of {sorted(results)}")
        kind = request.query.get("type")
        if kind is not None and kind not in {t.value for t in CallType}:
            return _error(400, "type must be single or group")
        q = RecordQuery(
            user=user,
            since=_int_param(request, "since", None, 0, 2**62),
            until=_int_param(request, "until", None, 0, 2**62),
            result=result,
            call_type=kind,
            page=_int_param(request, "page", 1, 1, 1_000_000),
            page_size=_int_param(request, "pageSize", 20, 1, MAX_PAGE_SIZE),
        )
        records, total = await self.server.records.query(q)
        return web.json_response(
            {"records": [r.to_json() for r in records], "total": total, "page": q.page}
        )

    async def delete_record(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if call_id in self.server.records.tracker.live:
            return _error(409, "the call is live: end it first")
        if not await self.server.records.delete([call_id]):
            return _error(404, f"no record {call_id!r:.80}")
        return web.json_response({"callId": call_id, "deleted": True})

    async def metrics(self, request: web.Request) -> web.Response:
        m = self.server.metrics
        try:
            m.webhook_backlog.set(await self.server.records.backlog())
        except Exception:  # the database is down: keep serving the other metrics
            m.webhook_backlog.set(-1)
        resp = web.Response(body=m.render())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    # ------------------------------------------------------------------ engine requests

    async def user_request(self, user: str, msg: p.Request) -> dict[str, Any]:
        """A signed-in user's own history: ``queryRecords`` / ``deleteRecords``."""
        try:
            if isinstance(msg, p.DeleteRecords):
                return {"deleted": await self.server.records.hide(user, list(msg.call_ids))}
            assert isinstance(msg, p.QueryRecords)
            if msg.result is not None and msg.result not in {r.value for r in CallResult}:
                raise CallStateError(ErrorCode.PARAM_INVALID, "unknown result filter")
            if not 1 <= msg.page <= 1_000_000 or not 1 <= msg.page_size <= MAX_PAGE_SIZE:
                raise CallStateError(
                    ErrorCode.PARAM_INVALID, f"page >= 1 and pageSize in 1..{MAX_PAGE_SIZE}"
                )
            q = RecordQuery(
                user=user,
                visible_to_user=True,
                since=msg.since,
                until=msg.until,
                result=msg.result,
                page=msg.page,
                page_size=msg.page_size,
            )
            records, total = await self.server.records.query(q)
        except StoreError as exc:
            raise CallStateError(ErrorCode.SCENE_NOT_SUPPORTED, str(exc)) from None
        return {"records": [r.to_json() for r in records], "total": total, "page": q.page}
