"""``backdrop accounts create | list | revoke | set-tier``: the accounts of a ``backdrop serve`` data folder.

A new account's API key is printed once, at creation; the database keeps only its SHA-256. A lost key cannot be
recovered: revoke the account and create another. Revoking takes effect on the server's next request.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from . import exit_codes


def add_accounts_parser(subparsers) -> None:
    """Register ``backdrop accounts`` on the ``backdrop`` parser's subparsers."""
    from .serve import add_storage_arguments

    accounts = subparsers.add_parser(
        "accounts", help="create, list, revoke accounts of `backdrop serve` and set their tiers",
        description="Accounts of a `backdrop serve` data folder. A new account's API key is printed once; only its "
                    "hash is kept.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="usage of each action:\n"
               "    backdrop accounts create NAME [--tier TIER] --data DIR [--database URL] [--json]\n"
               "    backdrop accounts list --data DIR [--database URL] [--json]\n"
               "    backdrop accounts revoke NAME --data DIR [--database URL] [--json]\n"
               "    backdrop accounts set-tier NAME TIER --data DIR [--database URL] [--json]\n"
               "tiers are defined in DATA/tiers.toml (written with defaults on first use)")
    actions = accounts.add_subparsers(dest="action", required=True, metavar="action")
    create = actions.add_parser("create", help="create an account and print its API key (shown once)")
    create.add_argument("name", help="account name (letters, digits, . _ -; unique)")
    create.add_argument("--tier", default="free", help="tier from DATA/tiers.toml (default: free)")
    listing = actions.add_parser("list", help="every account, its tier, status and images used today")
    revoke = actions.add_parser("revoke", help="revoke an account's key (requests get 401 from then on)")
    revoke.add_argument("name", help="account name or id")
    set_tier = actions.add_parser("set-tier", help="move an account to another tier")
    set_tier.add_argument("name", help="account name or id")
    set_tier.add_argument("tier", help="tier from DATA/tiers.toml")
    for action in (create, listing, revoke, set_tier):
        add_storage_arguments(action)
        action.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_accounts(args: argparse.Namespace) -> int:
    import re

    from ..runtime.errors import InvalidInputError
    from .serve.api_keys import hash_api_key, key_hint, new_api_key
    from .serve.config import DATABASE_ENV, DataFolder
    from .serve.database import open_store
    from .serve.store import utc_day
    from .serve.tiers import TierBook, ensure_tiers_file

    data = DataFolder.at(args.data).prepare()
    tiers = TierBook(ensure_tiers_file(data.tiers_path))
    store = open_store(args.database or os.environ.get(DATABASE_ENV), data.root)
    try:
        now = time.time()
        if args.action == "create":
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.name):
                raise InvalidInputError(f"account name {args.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                                        "starting with a letter or digit")
            _check_tier(args.tier, tiers)
            key = new_api_key()
            account = store.create_account(args.name, args.tier, hash_api_key(key), key_hint(key), now)
            if args.json:
                print(json.dumps({**_account_json(account), "api_key": key}))
            else:
                print(f"created account {account.name} ({account.id}), tier {account.tier}")
                print(f"API key (shown only now; the server keeps only its hash):\n{key}")
            return exit_codes.OK
        if args.action == "list":
            day = utc_day(now)
            rows = [{**_account_json(a), "images_today": store.usage(a.id, day), "active_jobs": store.active_jobs(a.id)}
                    for a in store.accounts()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows, tiers)
            return exit_codes.OK
        if args.action == "revoke":
            account = store.revoke(args.name, now)
            print(json.dumps(_account_json(account)) if args.json else f"revoked {account.name} ({account.id})")
            return exit_codes.OK
        _check_tier(args.tier, tiers)
        account = store.set_tier(args.name, args.tier)
        print(json.dumps(_account_json(account)) if args.json else f"{account.name} ({account.id}) is now on tier "
                                                                    f"{account.tier}")
        return exit_codes.OK
    finally:
        store.close()


def _check_tier(name: str, tiers) -> None:
    from ..runtime.errors import InvalidInputError

    known = tiers.reload(strict=True)
    if name not in known:
        raise InvalidInputError(f"no tier {name!r} in {tiers.path}; tiers: {', '.join(known)}")


def _account_json(account) -> dict:
    return {"id": account.id, "name": account.name, "tier": account.tier, "key": account.key_hint,
            "status": "active" if account.active else "revoked", "created_at": _iso(account.created_at),
            "revoked_at": None if account.revoked_at is None else _iso(account.revoked_at)}


def _iso(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _print_table(rows: list[dict], tiers) -> None:
    if not rows:
        print("no accounts yet; create one with: backdrop accounts create NAME --tier TIER --data DIR")
        return
    limits = tiers.current()
    header = ("NAME", "ID", "TIER", "STATUS", "KEY", "IMAGES TODAY", "ACTIVE JOBS", "CREATED")
    table = [header]
    for row in rows:
        tier = limits.get(row["tier"])
        quota = f"{row['images_today']}/{tier.images_per_day}" if tier else f"{row['images_today']}/? (unknown tier)"
        table.append((row["name"], row["id"], row["tier"], row["status"], row["key"], quota, str(row["active_jobs"]),
                      row["created_at"]))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
