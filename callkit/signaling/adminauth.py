"""Admin authentication for the service's HTTP API (``GET /calls``, ``GET /users/{id}`` ...).

An admin request carries a UserSig of the user ``administrator`` (TUICallKit's REST API
convention) signed with the app's secret key: ``Authorization: Bearer <UserSig>``. Anything
else gets ``401`` with a JSON body ``{"error": ..., "code": -1201}``.
"""

from __future__ import annotations

from aiohttp import web

from .codes import ErrorCode
from .usersig import UserSigError, verify_user_sig

__all__ = ["ADMIN_USER", "admin_refusal"]

#: the identifier an admin UserSig is issued for
ADMIN_USER = "administrator"
#: longest Authorization header read (a UserSig with a userbuf is ~1.3 kB)
_MAX_HEADER = 8192


def admin_refusal(
    request: web.Request, sdk_app_id: int, secret_key: str, now: float
) -> web.Response | None:
    """None when ``request`` carries a valid admin UserSig, else the 401 response to return."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        reason = "admin UserSig required (Authorization: Bearer <UserSig of administrator>)"
    elif len(header) > _MAX_HEADER or scheme.lower() != "bearer" or not token.strip():
        reason = "Authorization must be 'Bearer <UserSig>'"
    else:
        try:
            verify_user_sig(sdk_app_id, secret_key, ADMIN_USER, token.strip(), now=now)
            return None
        except UserSigError as exc:
            reason = f"admin UserSig refused: {exc.reason}"
    return web.json_response(
        {"error": reason, "code": int(ErrorCode.INIT_FAIL)},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="callkit"'},
    )
