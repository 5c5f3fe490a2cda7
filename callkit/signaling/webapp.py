"""HTTP routes for browsers: the web phone at ``/``, the SDK at ``/sdk/callkit.js``, and the
optional development login that mints UserSigs (``callkit serve --dev-login``).

The files live in ``callkit/signaling/web/`` and ship in the wheel. The development login
hands a valid UserSig to anyone who asks for any user id, so it is off by default and meant
for a laptop or a test, never for a service on a network: a real application's backend mints
UserSigs with :func:`callkit.signaling.usersig.gen_user_sig` (or ``callkit usersig USER``)
after its own authentication, and the page never holds the secret key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .codes import ErrorCode
from .protocol import valid_user_id
from .usersig import gen_user_sig

log = logging.getLogger("callkit.signaling.webapp")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WEB_DIR = Path(__file__).resolve().parent / "web"
#: lifetime of a UserSig minted by the development login (seconds)
DEV_SIG_EXPIRE = 24 * 3600
#: largest request body the development login reads (bytes)
MAX_DEV_BODY = 1024

_FILES = {
    "/": "index.html",
    "/sdk/callkit.js": "callkit.js",
    "/phone/phone.js": "phone.js",
    "/phone/phone.css": "phone.css",
}
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

DEV_LOGIN_WARNING = (
    "WARNING: --dev-login is on: POST /dev/usersig hands a valid UserSig for any user id to "
    "anyone who can reach this server. Use it for development only."
)


def add_web_routes(
    app: web.Application, *, sdk_app_id: int, secret_key: str, dev_login: bool = False
) -> None:
    """Serve the web phone and callkit.js on ``app``; with ``dev_login`` also
    ``POST /dev/usersig`` (``{"userId"}`` -> ``{"sdkAppId", "userId", "userSig"}``)."""
    for route, name in _FILES.items():
        app.router.add_get(route, _file_handler(WEB_DIR / name))
    if dev_login:
        app.router.add_post("/dev/usersig", _dev_login_handler(sdk_app_id, secret_key))


def _file_handler(path: Path) -> Handler:
    content_type = _TYPES.get(path.suffix, "application/octet-stream")

    async def handler(request: web.Request) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{path.name} is not installed")
        return web.FileResponse(path, headers={"Content-Type": content_type})

    return handler


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _dev_login_handler(sdk_app_id: int, secret_key: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_DEV_BODY:
            return _error(413, ErrorCode.PARAM_INVALID, f"body larger than {MAX_DEV_BODY} bytes")
        raw = await request.content.read(MAX_DEV_BODY + 1)
        if len(raw) > MAX_DEV_BODY:
            return _error(413, ErrorCode.PARAM_INVALID, f"body larger than {MAX_DEV_BODY} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, ErrorCode.PARAM_INVALID, 'expected a JSON body {"userId": "..."}')
        user_id = body.get("userId") if isinstance(body, dict) else None
        if not valid_user_id(user_id):
            return _error(
                400,
                ErrorCode.PARAM_INVALID,
                "userId must be 1 to 32 characters from A-Z a-z 0-9 - _",
            )
        assert isinstance(user_id, str)
        log.info("dev login: minted a UserSig for %s", user_id)
        sig = gen_user_sig(sdk_app_id, secret_key, user_id, DEV_SIG_EXPIRE)
        return web.json_response({"sdkAppId": sdk_app_id, "userId": user_id, "userSig": sig})

    return handler
