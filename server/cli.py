"""The `probelink` command: serve, token, rotate-key."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from server import __version__
from server.app import create_app, load_keyring, token_policy
from server.auth import Role, issue_token
from server.config import COORDINATOR_LINK_TTL_SECONDS, Settings, load_settings
from server.errors import ConfigError
from server.keyring import rotate
from server.logs import setup_logging

CLI_TOKEN_TTL_SECONDS = COORDINATOR_LINK_TTL_SECONDS
SERVE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token(args)
        if args.command == "rotate-key":
            return _rotate_key()
    except ConfigError as exc:
        print(f"probelink: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"probelink: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probelink", description="Tele-ultrasound consultations.")
    parser.add_argument("--version", action="version", version=f"probelink {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the server (settings from PROBELINK_*)")
    serve.add_argument("--host", help="address to listen on (PROBELINK_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (PROBELINK_PORT)")

    token = commands.add_parser("token", help="print a token signed with the server's key")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="who the token is for (an opaque name)")
    token.add_argument("--consultation", help="consultation id (operator, expert, observer)")
    token.add_argument("--name", help="display name shown to the room")
    token.add_argument(
        "--ttl", type=int, default=CLI_TOKEN_TTL_SECONDS, help="lifetime in seconds (default 12 h)"
    )

    commands.add_parser("rotate-key", help="make a fresh signing key active; old tokens stay valid")
    return parser


def _serve(args: argparse.Namespace) -> int:
    # Before anything is created: records, keys, archive and exports are the owner's only.
    os.umask(SERVE_UMASK)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)

    def announce(*_banner: object) -> None:
        # run_app calls this once the socket is bound: only then is the link any use.
        link = _coordinator_link(settings)
        print(f"probelink {__version__} serving on {settings.base_url}", flush=True)
        print(f"coordinator link (valid 12 h): {link}", flush=True)

    try:
        web.run_app(app, host=settings.host, port=settings.port, print=announce, access_log=None)
    except OSError as exc:
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {why}") from None
    return 0


def _coordinator_link(settings: Settings) -> str:
    token = issue_token(
        load_keyring(settings),
        token_policy(settings),
        sub="local-coordinator",
        role=Role.COORDINATOR,
        ttl_seconds=COORDINATOR_LINK_TTL_SECONDS,
    )
    return f"{settings.base_url}/#token={token}"


def _token(args: argparse.Namespace) -> int:
    settings = load_settings()
    token = issue_token(
        load_keyring(settings),
        token_policy(settings),
        sub=args.sub,
        role=Role(args.role),
        ttl_seconds=args.ttl,
        consultation_id=args.consultation,
        name=args.name,
    )
    print(token)
    return 0


def _rotate_key() -> int:
    settings = load_settings()
    if settings.secret_key is not None:
        raise ConfigError("PROBELINK_SECRET_KEY is set: rotate it where it is configured")
    ring = rotate(settings.data_dir)
    print(
        f"active key is now {ring.active}; {len(ring.keys) - 1} earlier key(s) still verify; "
        "running servers pick it up without a restart"
    )
    return 0
