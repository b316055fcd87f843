"""`lightabaco users add|list|revoke|token` and `lightabaco token`, called by the CLI.

    users_main(["add", "alice", "--role", "privileged"], home)  -> prints alice's token, returns 0
    token_main([], home)                                         -> prints the owner token, returns 0
Both return a process exit code and print errors (with what to do next) to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightabaco users", description="Manage the users of a multi-user "
                                     "server and their tokens (signed JWTs accepted by curl, tapipy, agavepy).")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user and print their token")
    add.add_argument("name")
    add.add_argument("--role", default="user", choices=ROLES)
    add.add_argument("--tenant", default=None, help="tenant of the user (default: the server's tenant)")
    add.add_argument("--ttl-days", type=float, default=365.0, help="token lifetime in days (default 365)")
    sub.add_parser("list", help="list users, their roles and whether they are revoked")
    revoke = sub.add_parser("revoke", help="revoke a user's token (their requests fail from now on)")
    revoke.add_argument("name")
    revoke.add_argument("--tenant", default=None)
    token = sub.add_parser("token", help="issue a new token for a user (earlier tokens stop working)")
    token.add_argument("name")
    token.add_argument("--tenant", default=None)
    token.add_argument("--role", default=None, choices=ROLES, help="also change the user's role")
    token.add_argument("--ttl-days", type=float, default=365.0)
    return parser


def users_main(argv: list[str], home: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage
        return int(exc.code or 0)
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
    out = out or sys.stdout
    err = err or sys.stderr
    parser = argparse.ArgumentParser(prog="lightabaco token", description="Print the owner's API token.")
    parser.add_argument("--rotate", action="store_true", help="replace the token; the old one stops working")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
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
