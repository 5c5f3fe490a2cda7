"""The ``callkit`` command: demo, serve, usersig, phone, bot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys

from callkit import serveconfig

DEFAULT_SDK_APP_ID = serveconfig.DEFAULT_SDK_APP_ID


def _serve(args: argparse.Namespace) -> int:
    from callkit import serveconfig
    from callkit.logformat import use_json_logs
    from callkit.signaling import SignalingServer
    from callkit.signaling.callstate import CallStateError
    from callkit.signaling.limits import ensure_open_files
    from callkit.signaling.records import SchemaTooNew, StoreError

    try:
        cfg = serveconfig.load(args)
        ssl_context = cfg.ssl_context()
    except serveconfig.ConfigError as exc:
        print(f"callkit serve: {exc}", file=sys.stderr)
        return 2
    if cfg.log_format == "json":
        use_json_logs()
    if cfg.secret_key is None:
        cfg.secret_key = secrets.token_hex(32)
        print(f"secret key: {cfg.secret_key}", file=sys.stderr)

    async def run() -> int:
        server = SignalingServer(
            cfg.sdk_app_id,
            cfg.secret_key or "",
            ice_servers=cfg.ice_servers(),
            ssl_context=ssl_context,
            dev_login=cfg.dev_login,
            db=cfg.records_db,
            webhooks=cfg.webhook,
            webhook_secret=cfg.webhook_secret,
            webhook_timeout=cfg.webhook_timeout,
            records_heartbeat=cfg.records_heartbeat,
            redis=cfg.redis,
            node_id=cfg.node_id,
        )
        problem = ensure_open_files(server.config.max_connections)
        if problem is not None:
            print(f"callkit serve: {problem}", file=sys.stderr)
            return 2
        try:
            url = await server.start(cfg.host, cfg.port)
        except OSError as exc:
            print(
                f"callkit serve: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        except (StoreError, SchemaTooNew, CallStateError) as exc:  # -1406: Redis unreachable
            print(f"callkit serve: {exc}", file=sys.stderr)
            await server.stop()
            return 2
        node = f", node {server.store.node} over Redis" if cfg.redis is not None else ""
        print(f"callkit signaling on {url} (sdkAppId {cfg.sdk_app_id}{node})", flush=True)
        print(f"web phone on http{url[2:-3]}/", flush=True)
        if cfg.dev_login:
            from callkit.signaling.webapp import DEV_LOGIN_WARNING

            print(DEV_LOGIN_WARNING, file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run())
    return 0


def _usersig(args: argparse.Namespace) -> int:
    from callkit.signaling.grants import group_grant
    from callkit.signaling.usersig import gen_user_sig

    groups = [g for g in (args.groups or "").split(",") if g]
    userbuf = group_grant(groups) if groups else None
    print(
        gen_user_sig(args.sdk_app_id, args.secret_key, args.user_id, args.expire, userbuf=userbuf)
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.seconds)


def _sample(name: str):  # type: ignore[no-untyped-def]
    """The runnable sample ``samples/<name>.py`` (installed with callkit)."""
    import importlib

    return importlib.import_module(f"callkit.samples.{name}")


def _phone(args: argparse.Namespace) -> int:
    return int(_sample("softphone").main(args.args, prog="callkit phone"))


def _bot(args: argparse.Namespace) -> int:
    module = {"echo": "echo_bot", "record": "record_bot", "tone": "tone_bot"}[args.kind]
    return int(_sample(module).main(args.args, prog=f"callkit bot {args.kind}"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``callkit``."""
    from callkit.samples.common import HelpFormatter as fmt

    parser = argparse.ArgumentParser(prog="callkit", description=__doc__, formatter_class=fmt)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG to stderr (default: WARNING)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run real calls between in-process engines", formatter_class=fmt
    )
    demo.add_argument("--seconds", type=float, default=4.0, help="talk time per call, seconds")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser(
        "serve",
        help="run the signaling service",
        description="Run the signaling service. Every option may also be set in the "
        "environment (CALLKIT_<OPTION>) or in a TOML --config file; the command line wins, "
        "then the environment, then the file.",
    )
    serveconfig.add_arguments(serve)
    serve.set_defaults(func=_serve)

    usersig = sub.add_parser("usersig", help="print a UserSig for USER_ID", formatter_class=fmt)
    usersig.add_argument("user_id", help="the user id to sign for")
    usersig.add_argument(
        "--sdk-app-id", type=int, default=DEFAULT_SDK_APP_ID, help="the application id"
    )
    usersig.add_argument(
        "--secret-key", required=True, help="the secret key the signaling server runs with"
    )
    usersig.add_argument(
        "--expire", type=int, default=15552000, help="validity in seconds (15552000 is 180 days)"
    )
    usersig.add_argument(
        "--groups",
        help="comma-separated group ids this user may join by room id uninvited (a signed grant)",
    )
    usersig.set_defaults(func=_usersig)

    # the sample parses its own options: prefix_chars="+" makes this parser take "--user"
    # etc. as plain words for REMAINDER (which refuses a leading "--option" otherwise)
    phone = sub.add_parser(
        "phone",
        add_help=False,
        prefix_chars="+",
        help="interactive terminal softphone (samples/softphone.py; --help)",
    )
    phone.add_argument("args", nargs=argparse.REMAINDER)
    phone.set_defaults(func=_phone)

    bot = sub.add_parser("bot", help="run a bot: echo, record or tone (samples/*_bot.py)")
    bot.add_argument(
        "kind",
        choices=["echo", "record", "tone"],
        help="echo (logs in as 'echo'), record ('recorder') or tone ('tone')",
    )
    bot.add_argument("args", nargs=argparse.REMAINDER, help="the bot's options (--help)")
    bot.set_defaults(func=_bot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``callkit`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
