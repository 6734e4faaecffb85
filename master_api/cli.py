"""``aicdn-master``: run the master, or manage its users.

    aicdn-master serve [--config FILE]
    aicdn-master dns [--config FILE]
    aicdn-master user create NAME --role admin|operator|viewer [--password-stdin]

Settings come from ``AICDN_*`` variables and the optional TOML file (``--config`` or
``AICDN_CONFIG``); a bad value stops here with a message naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from master_api import __version__
from master_api.api.common import NAME_PATTERN
from master_api.errors import ApiError
from master_api.models import ROLES, Role, User
from master_api.repos import Repos
from master_api.server import serve
from master_api.services.passwords import Passwords, check_password_strength
from master_api.settings import Settings, SettingsError
from master_api.store import EmbeddedMongo, EmbeddedMongoError, Store, port_open

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aicdn-master", description="Run the AI CDN Tunnel master, or manage its users."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help="TOML settings file (else $AICDN_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the REST API, leader election and monitor")
    commands.add_parser("dns", help="run the smart DNS server (nearest healthy edges)")
    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser("create", help="create a user")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(config_file=args.config)
    except SettingsError as exc:
        print(f"aicdn-master: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymongo's DEBUG records carry whole commands and replies: config YAML with relay
    # passwords, user documents. Never below INFO, whatever the master's own level.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "dns":
            from master_api.dns.main import run_dns  # only this command needs dnslib/iptocc

            return run_dns(settings)
        return _create_user(settings, args.name, cast(Role, args.role), args.password_stdin)
    except (EmbeddedMongoError, SettingsError) as exc:
        print(f"aicdn-master: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"aicdn-master: {exc.message}", file=sys.stderr)
        return 1


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise SettingsError("password: the two entries differ")
    return first


@contextmanager
def _store(settings: Settings) -> Iterator[Store]:
    """The database: ``mongo_uri``, the running embedded store, or one started for the call."""
    embedded: EmbeddedMongo | None = None
    uri = settings.mongo_uri
    if uri is None:
        embedded = EmbeddedMongo(Path(settings.data_dir) / "mongo", settings.embedded_mongo_port)
        if port_open(embedded.host, embedded.port):
            uri, embedded = embedded.uri, None  # a master is running: use its store
        else:
            embedded.start()
            uri = embedded.uri
    store = Store(uri, settings.mongo_db, settings.mongo_timeout)
    try:
        yield store
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


def _create_user(settings: Settings, name: str, role: Role, from_stdin: bool) -> int:
    if not re.fullmatch(NAME_PATTERN, name):
        print(f"aicdn-master: bad user name {name!r}; expected {NAME_PATTERN}", file=sys.stderr)
        return 2
    password = _read_password(from_stdin)
    problem = check_password_strength(password)
    if problem:
        print(f"aicdn-master: {problem}", file=sys.stderr)
        return 1
    with _store(settings) as store:
        repos = Repos(store.db)
        repos.users.ensure_indexes()
        now = time.time()
        user = User(name, role, Passwords(settings).hash(password), now, now)
        repos.users.create(user)
    print(f"created {role} {name}")
    return 0
