"""`fleet-mcp-proxy episodes list|show|export`: read the recorded episodes without running the proxy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio

from .recorder import default_store_path
from .store import EpisodeStore, EpisodeSummary, StoreError, is_postgres_url, open_any_store

DEFAULT_DB = str(default_store_path())  # where `serve` records by default
PROG = "fleet-mcp-proxy episodes"


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


_DB_HELP = f"episode database: a SQLite file (default {DEFAULT_DB}) or a postgresql:// URL"


def _add_subcommands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="episodes_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="recorded episodes, newest first")
    listing.add_argument("--db", default=DEFAULT_DB, metavar="PATH|URL", help=_DB_HELP)
    listing.add_argument("--limit", type=_non_negative, default=50, metavar="N", help="at most N (default 50)")
    listing.add_argument("--task", metavar="KEY", help="only episodes bound to this task key")
    show = commands.add_parser("show", help="one episode with its instances and calls, as JSON")
    show.add_argument("episode_id", metavar="ID")
    show.add_argument("--db", default=DEFAULT_DB, metavar="PATH|URL", help=_DB_HELP)
    export = commands.add_parser("export", help="every episode as JSON Lines, oldest first (for training)")
    export.add_argument("--db", default=DEFAULT_DB, metavar="PATH|URL", help=_DB_HELP)
    export.add_argument("--out", metavar="FILE", help="write here instead of stdout (replaced only when complete)")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `episodes ...` to the project CLI; dispatch the parsed args to `run`."""
    _add_subcommands(subparsers.add_parser("episodes", help="inspect and export recorded episodes"))


def _table(summaries: Sequence[EpisodeSummary]) -> list[str]:
    rows = [("EPISODE", "STARTED (UTC)", "TASK", "CALLS", "STATUS", "REWARD", "STATE", "ENDED")]
    for s in summaries:
        started = s.started_at.strftime("%Y-%m-%d %H:%M:%S")
        reward = "-" if s.reward is None else f"{s.reward:g}"
        cells = (s.episode_id, started, s.task_key or "-", str(s.call_count), s.status or "-", reward, s.state)
        rows.append((*cells, s.end_reason or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


async def _list(store: EpisodeStore, args: argparse.Namespace, out: TextIO) -> int:
    for line in _table(await store.list(limit=args.limit, task_key=args.task)):
        print(line, file=out)
    return 0


async def _show(store: EpisodeStore, args: argparse.Namespace, out: TextIO) -> int:
    record = await store.get(args.episode_id)
    if record is None:
        print(f"{PROG}: no episode {args.episode_id} in {store.path}", file=sys.stderr)
        return 1
    print(json.dumps(record.to_json(), indent=2), file=out)
    return 0


async def _export(store: EpisodeStore, args: argparse.Namespace, out: TextIO) -> int:
    async for episode in store.export():
        out.write(json.dumps(episode, separators=(",", ":")) + "\n")
    return 0


_COMMANDS = {"list": _list, "show": _show, "export": _export}


async def _run(path: Path | str, args: argparse.Namespace, out: TextIO) -> int:
    # create=False: reading must never create, convert or migrate the database it is pointed at.
    async with await open_any_store(path, create=False) as store:
        return await _COMMANDS[args.episodes_command](store, args, out)


def _guarded(path: Path | str, args: argparse.Namespace, out: TextIO) -> int:
    try:
        return anyio.run(_run, path, args, out)
    except StoreError as exc:  # unreadable, not ours, or from a newer proxy: names the file (or host and database)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 no such episode, 2 the database is missing or unusable (or --out unwritable)."""
    path: Path | str = args.db if is_postgres_url(args.db) else Path(args.db)
    if isinstance(path, Path) and not path.is_file():
        print(f"{PROG}: no episode database at {path} (use --db PATH)", file=sys.stderr)
        return 2
    if not getattr(args, "out", None):
        return _guarded(path, args, sys.stdout)
    # Written aside and renamed at the end, so a training job never reads half an export.
    out_path = Path(args.out)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            status = _guarded(path, args, out)
    except OSError as exc:
        print(f"{PROG}: cannot write {out_path}: {exc.strerror}", file=sys.stderr)
        return 2
    if status == 0:
        partial.replace(out_path)
    else:
        partial.unlink(missing_ok=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect and export recorded episodes.")
    _add_subcommands(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BrokenPipeError:  # `... export | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # keeps the interpreter's final flush quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
