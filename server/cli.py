"""The `probelink` command: serve, token, rotate-key, expert."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from aiohttp import web

from server import __version__
from server.app import create_app, load_keyring, token_policy
from server.audit import AuditFacts
from server.auth import Role, issue_token
from server.config import COORDINATOR_LINK_TTL_SECONDS, SQLITE_FILE_NAME, Settings, load_settings
from server.consultations.model import Application
from server.consultations.store import Store, open_store
from server.errors import ConfigError, ProbelinkError
from server.experts.model import SUB_PATTERN, ExpertProfile, subspecialty_set
from server.experts.store import Experts
from server.keyring import rotate
from server.logs import setup_logging
from server.messages import parse
from server.shutdown import REQUEST_GRACE_SECONDS

log = logging.getLogger(__name__)

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
        if args.command == "expert" and args.expert_command == "add":
            return asyncio.run(_expert_add(args))
        if args.command == "expert" and args.expert_command == "list":
            return asyncio.run(_expert_list())
    except ProbelinkError as exc:  # ConfigError, or a value refused like an HTTP body's
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
    serve.add_argument(
        "--print-link",
        action="store_true",
        help="print a coordinator link (a 12-hour token) once listening; without it no token is"
        " printed, since standard output often ends up in the system journal",
    )

    token = commands.add_parser("token", help="print a token signed with the server's key")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="who the token is for (an opaque name)")
    token.add_argument(
        "--consultation",
        help="consultation id (operator, observer; for an expert, without it: their own"
        " reading-room token, for their queue)",
    )
    token.add_argument("--name", help="display name shown to the room")
    token.add_argument(
        "--ttl", type=int, default=CLI_TOKEN_TTL_SECONDS, help="lifetime in seconds (default 12 h)"
    )

    commands.add_parser("rotate-key", help="make a fresh signing key active; old tokens stay valid")

    expert = commands.add_parser("expert", help="experts' credentials (subspecialties)")
    expert_commands = expert.add_subparsers(dest="expert_command")
    add = expert_commands.add_parser("add", help="register an expert, or replace their credentials")
    add.add_argument("--sub", required=True, help="the expert's token subject, e.g. dr-lee")
    add.add_argument("--name", required=True, help="the expert's name, shown to the room")
    add.add_argument(
        "--subspecialty",
        required=True,
        action="append",
        choices=[a.value for a in Application],
        help="an application the expert reads (repeat for several)",
    )
    add.add_argument("--inactive", action="store_true", help="registered, but offered nothing")
    add.add_argument("--email", help="where notifications reach them (none: not told by e-mail)")
    expert_commands.add_parser("list", help="list the registered experts")
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
        print(f"probelink {__version__} serving on {settings.base_url}", flush=True)
        if args.print_link:
            link = _coordinator_link(settings)
            print(f"coordinator link (valid 12 h): {link}", flush=True)
        else:
            print(
                "for a coordinator link: `probelink token --role coordinator --sub <desk>`,"
                " or serve with --print-link",
                flush=True,
            )

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=announce,
            access_log=None,
            shutdown_timeout=REQUEST_GRACE_SECONDS,
        )
    except OSError as exc:
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {why}") from None
    log.info("stopped")
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


async def _records(settings: Settings) -> Store:
    """The server's records store (migrated), refusing a data directory that has none."""
    if settings.database_url is None and not (settings.data_dir / SQLITE_FILE_NAME).exists():
        raise ConfigError(
            f"no records store in {settings.data_dir}: run `probelink serve` once with this data"
            " directory (PROBELINK_DATA_DIR, relative to the working directory) to create it"
        )
    return await open_store(settings.sqlalchemy_url)


async def _expert_add(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not re.fullmatch(SUB_PATTERN, args.sub):
        raise ValueError("--sub must be 1 to 128 of A-Z a-z 0-9 . _ @ -")
    profile = parse(
        ExpertProfile,
        {
            "name": args.name,
            "subspecialties": args.subspecialty,
            "active": not args.inactive,
            "email": args.email,
        },
    )
    subspecialties = subspecialty_set(profile.subspecialties)
    audit = AuditFacts(
        actor="cli",
        role=Role.COORDINATOR.value,
        action="expert.register",
        object_type="expert",
        object_id=args.sub,
        outcome="ok",
        source="cli",
        detail={"subspecialties": [s.value for s in subspecialties], "active": profile.active},
    )
    store = await _records(settings)
    try:
        row, created = await Experts(store).put(
            args.sub,
            profile.name,
            subspecialties,
            profile.active,
            datetime.now(UTC),
            audit,
            email=profile.email,
        )
    finally:
        await store.close()
    print(
        f"expert {row.sub} {'registered' if created else 'updated'}"
        f" ({'active' if row.active else 'inactive'}):"
        f" {', '.join(s.value for s in row.subspecialties)}"
    )
    print(f"their reading-room token: probelink token --role expert --sub {row.sub}")
    return 0


async def _expert_list() -> int:
    store = await _records(load_settings())
    try:
        experts = await Experts(store).all()
    finally:
        await store.close()
    for e in experts:
        state = "active" if e.active else "inactive"
        print(f"{e.sub}\t{state}\t{','.join(s.value for s in e.subspecialties)}\t{e.name}")
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
