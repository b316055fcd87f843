"""`lightabaco users add|list|revoke|token` and `lightabaco token`, called by the CLI.

    users_main(["add", "alice", "--role", "privileged"], home)  -> prints alice's token, returns 0
    token_main([], home)                                         -> prints the owner token, returns 0
Both return a process exit code and print errors (with what to do next) to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, TextIO

from lightabaco.sharing import auth
from lightabaco.protocol.errors import AbacoError
from lightabaco.sharing.identity import ROLES


def _connect(home: Path) -> str:
    """Open the instance database (the same one the server uses); returns its default tenant."""
    from lightabaco.config import Settings
    from lightabaco.store.db import connect

    settings = Settings.from_env(home=home)
    connect(settings)
    return settings.tenant


def add_users_commands(parser: argparse.ArgumentParser,
                       common: Callable[[argparse.ArgumentParser], None] = lambda p: None) -> None:
    """The `users` sub-commands, on `parser`; `common` adds the global options to each one (the
    `lightabaco` command accepts --home/--json/... after the sub-command too)."""
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="create a user and print their token")
    add.add_argument("name", help="user name (the token's subject)")
    add.add_argument("--role", default="user", choices=ROLES, help="the user's role (default user)")
    add.add_argument("--tenant", default=None, help="tenant of the user (default: the server's tenant)")
    add.add_argument("--ttl-days", type=float, default=365.0, help="token lifetime in days (default 365)")
    listing = sub.add_parser("list", help="list users, their roles and whether they are revoked")
    revoke = sub.add_parser("revoke", help="revoke a user's token (their requests fail from now on)")
    revoke.add_argument("name", help="user name")
    revoke.add_argument("--tenant", default=None, help="tenant of the user (default: the server's tenant)")
    token = sub.add_parser("token", help="issue a new token for a user (earlier tokens stop working)")
    token.add_argument("name", help="user name")
    token.add_argument("--tenant", default=None, help="tenant of the user (default: the server's tenant)")
    token.add_argument("--role", default=None, choices=ROLES, help="also change the user's role")
    token.add_argument("--ttl-days", type=float, default=365.0, help="token lifetime in days (default 365)")
    for p in (add, listing, revoke, token):
        common(p)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightabaco users", description=USERS_DESCRIPTION)
    add_users_commands(parser)
    return parser


USERS_DESCRIPTION = ("Manage the users of a multi-user server and their tokens (signed JWTs accepted by curl, "
                     "tapipy, agavepy).")


def users_main(argv: list[str], home: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage
        return int(exc.code or 0)
    return run_users(args, home, out, err)


def run_users(args: argparse.Namespace, home: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Carry out parsed `users` arguments (see add_users_commands) on the instance in `home`."""
    out = out or sys.stdout
    err = err or sys.stderr
    from lightabaco.sharing import auth

    home = Path(home)
    try:
        default_tenant = _connect(home)
        auth.ensure_owner_token(home, default_tenant)
        tenant = getattr(args, "tenant", None) or default_tenant
        if args.command == "add":
            print(auth.add_user(home, args.name, args.role, tenant, ttl_s=args.ttl_days * 86400), file=out)
        elif args.command == "token":
            print(auth.issue_token(home, args.name, tenant, ttl_s=args.ttl_days * 86400, role=args.role), file=out)
        elif args.command == "revoke":
            auth.revoke_user(args.name, tenant)
            print(f"revoked {args.name} ({tenant}); `lightabaco users token {args.name}` re-enables them", file=out)
        else:
            owner, owner_tenant = auth.owner_name(home)
            print(f"{'USER':24} {'TENANT':12} {'ROLES':20} STATUS", file=out)
            print(f"{owner:24} {owner_tenant:12} {'admin (owner)':20} active", file=out)
            for user in auth.list_users():
                status = "revoked" if user["revoked"] else "active"
                print(f"{user['username']:24} {user['tenant']:12} {','.join(user['roles']):20} {status}", file=out)
    except AbacoError as exc:
        print(f"lightabaco users: {exc.message}", file=err)
        return 1
    return 0


def token_main(argv: list[str], home: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the owner token (`--rotate` replaces it first: the old token stops working)."""
    parser = argparse.ArgumentParser(prog="lightabaco token", description="Print the owner's API token.")
    add_token_options(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_token(args, home, out, err)


def add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rotate", action="store_true", help="replace the token; the old one stops working")


def run_token(args: argparse.Namespace, home: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the owner token of the instance in `home` (replacing it first with args.rotate)."""
    from lightabaco.sharing import auth

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from lightabaco.config import Settings

        tenant = Settings.from_env(home=Path(home)).tenant
        token = auth.rotate_owner_token(Path(home)) if args.rotate else auth.ensure_owner_token(Path(home), tenant)
    except (OSError, AbacoError, ValueError) as exc:
        print(f"lightabaco token: cannot read or create the token in {home}: {exc}; check --home and its "
              "permissions", file=err)
        return 1
    print(token, file=out)
    return 0
