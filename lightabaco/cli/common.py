"""Helpers shared by the `lightabaco` command's modules: errors, the home, tables, JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, TextIO

from lightabaco.config import default_home as config_default_home

# 3: the request worked but there was nothing to give (`results` with no result left).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3


class CliError(Exception):
    """A user-facing failure: printed as `lightabaco: <message>` with exit status 1."""


def default_home() -> Path:
    """--home, else LIGHTABACO_HOME, else the server's default (see lightabaco.config.default_home)."""
    return config_default_home()


def version() -> str:
    """The installed package's version ("dev" when running from a source tree that is not installed)."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("lightabaco")
    except Exception:  # PackageNotFoundError, or broken metadata
        return "dev"


# -- output -------------------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    """Print rows as aligned columns; `columns` is [(key, HEADER)]."""
    cells = [[str(get(row, key) if get(row, key) is not None else "") for key, _ in columns] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths)).rstrip(), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip(), file=out)


def get(row: dict[str, Any], key: str) -> Any:
    # Servers in camel mode answer executionId instead of execution_id: accept both spellings.
    if key in row:
        return row[key]
    camel = key.split("_")[0] + "".join(p.title() for p in key.split("_")[1:])
    return row.get(camel)


def emit(args: argparse.Namespace, data: Any, human: Callable[[], object]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str), file=args.out)
    else:
        human()


def kv(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{what} must be KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def progress_for(args: argparse.Namespace) -> Any:
    from .progress import make_progress

    return None if args.json else make_progress(args.err)
