"""The configuration of ``callkit serve``: one dataclass, from CLI, environment and TOML.

Every field of :class:`ServeConfig` is one option. Its value comes from, first found wins:

1. the command line: ``--tls-cert FILE`` (field ``tls_cert``);
2. the environment: ``CALLKIT_TLS_CERT`` (lists: comma-separated; booleans: 1/0, true/false,
   yes/no, on/off);
3. the TOML file named by ``--config`` (or ``CALLKIT_CONFIG``): ``tls_cert = "..."`` or
   ``tls-cert = "..."`` at the top level (lists are TOML arrays);
4. the field's default.

So a secret can stay out of ``ps``: put ``secret_key`` / ``turn_secret`` in the file or the
environment. A bad value anywhere is a :class:`ConfigError` whose message is one line naming
the option and where it came from; ``callkit serve`` prints it and exits with status 2.

To add an option: add a field with ``metadata=opt("help text")`` (and ``flag=True`` for an
on/off switch, ``choices=...``, ``metavar=...``) and read it where the server is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import ssl
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from callkit.signaling.ice import IceServersConfig

__all__ = ["ConfigError", "ServeConfig", "add_arguments", "load", "opt"]

ENV_PREFIX = "CALLKIT_"
#: a cluster node id: it names the node's Redis channel
NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_SDK_APP_ID = 1400000001


class ConfigError(Exception):
    """A bad option value; ``str(exc)`` is one line naming the option and its source."""


def opt(
    help: str,
    *,
    flag: bool = False,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    secret: bool = False,
) -> dict[str, Any]:
    """Field metadata describing one option (see the module docstring)."""
    return {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "secret": secret}


@dataclass
class ServeConfig:
    """Everything ``callkit serve`` needs; validated in ``__post_init__``."""

    #: address to listen on (``0.0.0.0`` or ``::`` for every interface)
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on"))
    #: TCP port to listen on (0: any free port)
    port: int = field(default=8765, metadata=opt("TCP port (0: any free port)"))
    #: the application id UserSigs are made for
    sdk_app_id: int = field(
        default=DEFAULT_SDK_APP_ID, metadata=opt("application id UserSigs are checked against")
    )
    #: the UserSig secret; None: a random one, printed at start
    secret_key: str | None = field(
        default=None,
        metadata=opt("UserSig secret key (unset: a random one, printed at start)", secret=True),
    )
    #: PEM certificate chain; with ``tls_key`` the service is served as wss:// and https://
    tls_cert: str | None = field(
        default=None, metadata=opt("PEM certificate (chain): serve wss:// and https://")
    )
    #: PEM private key of ``tls_cert``
    tls_key: str | None = field(default=None, metadata=opt("PEM private key for --tls-cert"))
    #: STUN server URLs handed to clients at login
    stun: list[str] = field(
        default_factory=list,
        metadata=opt("STUN URL given to clients, e.g. stun:turn.example.com:3478 (repeatable)"),
    )
    #: TURN server URLs handed to clients at login, with fresh credentials
    turn: list[str] = field(
        default_factory=list,
        metadata=opt(
            "TURN URL given to clients with fresh credentials, e.g. "
            "turn:turn.example.com:3478?transport=udp, turns:...:5349?transport=tcp "
            "(repeatable; needs --turn-secret)"
        ),
    )
    #: coturn's ``static-auth-secret`` (``use-auth-secret``)
    turn_secret: str | None = field(
        default=None, metadata=opt("coturn static-auth-secret for TURN credentials", secret=True)
    )
    #: seconds a TURN credential handed out at login stays valid
    turn_ttl: float = field(default=86400.0, metadata=opt("TURN credential lifetime in seconds"))
    #: serve POST /dev/usersig, which mints a UserSig for any user id (development only)
    dev_login: bool = field(
        default=False,
        metadata=opt(
            "serve POST /dev/usersig, which mints a UserSig for any user id, so the web phone "
            "can sign in without a backend (development only; prints a warning)",
            flag=True,
        ),
    )

    #: call records: SQLite file (default, beside the server) or PostgreSQL; "none": off
    db: str = field(
        default="sqlite://callkit-records.db",
        metadata=opt(
            "call records database: sqlite:///abs/path.db, sqlite://relative.db, "
            "postgresql://user:password@host:port/db, or none",
            metavar="URL",
        ),
    )
    #: URLs that receive signed call webhooks (TUICallKit's Call.CallbackAfter*)
    webhook: list[str] = field(
        default_factory=list,
        metadata=opt("URL that receives signed call webhooks (repeatable; needs --webhook-secret)"),
    )
    #: HMAC-SHA256 key that signs every webhook delivery
    webhook_secret: str | None = field(
        default=None, metadata=opt("secret that signs webhook deliveries", secret=True)
    )
    #: seconds between "still live" touches of this server's live call records
    records_heartbeat: float = field(
        default=5.0,
        metadata=opt(
            "seconds between touches of live call records (a crash loses at most this much "
            "of a call; with PostgreSQL other servers close a dead server's calls after 3x)"
        ),
    )
    #: seconds one webhook delivery attempt may take before it counts as failed
    webhook_timeout: float = field(
        default=5.0, metadata=opt("seconds one webhook delivery attempt may take")
    )
    #: the Redis that several nodes share (users, devices, calls, timers); None: one node
    redis: str | None = field(
        default=None,
        metadata=opt(
            "Redis URL shared by several `callkit serve` nodes, e.g. redis://127.0.0.1:6379/0 "
            "(unset: one node, its state in memory)",
            metavar="URL",
        ),
    )
    #: this node's id among the nodes sharing ``redis``; None: a random one
    node_id: str | None = field(
        default=None,
        metadata=opt(
            "this node's name among the nodes sharing --redis (each start adds a random "
            "incarnation suffix; unset: 'node')"
        ),
    )
    #: log line format
    log_format: str = field(
        default="text", metadata=opt("log format: text or json", choices=("text", "json"))
    )

    @property
    def records_db(self) -> str | None:
        """The records database URL, or None when records are off."""
        return None if self.db.strip().lower() in ("", "none", "off") else self.db

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: {self.log_format!r} is not text or json")
        for url in self.webhook:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"webhook: {url!r} is not an http:// or https:// URL")
        if not 0.1 <= self.records_heartbeat <= 3600:
            raise ConfigError(f"records_heartbeat: {self.records_heartbeat} not in [0.1, 3600]")
        if not 0 < self.webhook_timeout <= 300:
            raise ConfigError(f"webhook_timeout: {self.webhook_timeout} not in (0, 300] seconds")
        if self.webhook and not self.webhook_secret:
            raise ConfigError("webhook: needs --webhook-secret to sign deliveries")
        if self.webhook and self.records_db is None:
            raise ConfigError("webhook: needs a records database (--db), the outbox lives there")
        if self.redis is not None and not self.redis.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(f"redis: {self.redis!r} is not a redis://, rediss:// or unix:// URL")
        if self.node_id is not None:
            if self.redis is None:
                raise ConfigError("node_id: only means something with --redis")
            if not NODE_ID_RE.fullmatch(self.node_id):
                raise ConfigError(
                    f"node_id: {self.node_id!r} is not 1-64 letters, digits, '.', '_' or '-'"
                )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port (0-65535)")
        if not 0 < self.sdk_app_id < 2**32:
            raise ConfigError(f"sdk_app_id: {self.sdk_app_id} out of range")
        if self.secret_key is not None and not self.secret_key:
            raise ConfigError("secret_key: empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key: give both or neither")
        try:
            self.ice_servers()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def tls(self) -> bool:
        """Serve wss:// and https://."""
        return self.tls_cert is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or None; raises ConfigError for an unusable cert or key."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        for path in (self.tls_cert, self.tls_key):
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read {path!r} (tls_cert/tls_key)")
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load certificate {self.tls_cert!r} with key {self.tls_key!r}: "
                f"{getattr(exc, 'reason', None) or exc}"
            ) from None
        return ctx

    def ice_servers(self) -> IceServersConfig:
        """The ICE servers the service hands out (raises ValueError on a bad URL)."""
        return IceServersConfig(
            stun=list(self.stun),
            turn=list(self.turn),
            turn_secret=self.turn_secret,
            turn_ttl=self.turn_ttl,
        )


def _fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(ServeConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(ServeConfig)]


def _kind(tp: Any) -> type:
    """The scalar type of a field annotation: ``int | None`` -> int, ``list[str]`` -> list."""
    if typing.get_origin(tp) is list:
        return list
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp  # type: ignore[no-any-return]


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return "none"
    value = f.default
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--option`` per field (plus ``--config``); defaults are SUPPRESSed so that
    :func:`load` can tell a given option from an absent one. Each help shows the default and
    the environment variable."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file with any of these options (env {ENV_PREFIX}CONFIG; default: none)",
    )
    for f, tp in _fields():
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        helptext = f"{meta['help']} (default: {_default_text(f)}; env {env})"
        kind = _kind(tp)
        if meta.get("flag"):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=helptext,
            )  # fmt: skip
        elif kind is list:
            parser.add_argument(
                flag, action="append", default=argparse.SUPPRESS, metavar="URL", help=helptext
            )
        else:
            parser.add_argument(
                flag,
                default=argparse.SUPPRESS,
                metavar=meta.get("metavar") or f.name.split("_")[-1].upper(),
                choices=meta.get("choices"),
                help=helptext,
            )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(name: str, kind: type, value: Any, source: str) -> Any:
    """Convert one raw value (a CLI/env string or a TOML value) to the field's type."""
    where = f"{name} ({source})"
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path!r} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServeConfig:
    """Build the configuration from parsed CLI ``args``, ``environ`` and the TOML file;
    raises :class:`ConfigError` (one line) on any bad value."""
    given = {k: v for k, v in vars(args or argparse.Namespace()).items()}
    env = os.environ if environ is None else environ
    config_path = given.get("config") or env.get(ENV_PREFIX + "CONFIG") or None
    from_file = _read_toml(config_path) if config_path else {}
    fields = _fields()
    unknown = set(from_file) - {f.name for f, _ in fields}
    if unknown:
        raise ConfigError(f"config: unknown option {sorted(unknown)[0]!r} in {config_path!r}")
    values: dict[str, Any] = {}
    for f, tp in fields:
        kind = _kind(tp)
        env_name = ENV_PREFIX + f.name.upper()
        if f.name in given:
            values[f.name] = _convert(f.name, kind, given[f.name], "command line")
        elif env_name in env:
            values[f.name] = _convert(f.name, kind, env[env_name], env_name)
        elif f.name in from_file:
            values[f.name] = _convert(f.name, kind, from_file[f.name], str(config_path))
    return ServeConfig(**values)
