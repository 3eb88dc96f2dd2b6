"""`fleet-mcp-proxy finish`: complete every episode end that a stopped or killed proxy left pending."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import anyio
from pydantic import ValidationError

from . import lifecycle
from .config import ConfigError, ProxyConfig, load_config, store_override


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    finish = subparsers.add_parser(
        "finish",
        help="grade and release the episodes a stopped or killed proxy left unfinished",
        description="Grades (while their instances live) and releases every episode in the store whose "
        "process is gone. Safe to run beside a live proxy: it never takes a live process's episodes.",
    )
    finish.add_argument("--config", metavar="FILE", help="the TOML config the proxy ran with")
    finish.add_argument(
        "--store",
        metavar="URL|PATH",
        help="the episode store: a postgresql:// URL or a SQLite file (default: the config's, or the default)",
    )
    finish.add_argument("--config-stdin", action="store_true", help=argparse.SUPPRESS)  # a stopping proxy's finisher
    finish.add_argument("--log-level", default="INFO")


def _config(args: argparse.Namespace) -> ProxyConfig:
    if args.config_stdin:
        return ProxyConfig.model_validate(json.loads(sys.stdin.read()))
    return load_config(args.config, store=args.store)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = _config(args)
    except (ConfigError, ValidationError, ValueError) as exc:
        print(f"fleet-mcp-proxy finish: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.store and args.config_stdin:
        config = ProxyConfig.model_validate({**config.model_dump(), **store_override(args.store)})
    return anyio.run(_finish, config)


async def _finish(config: ProxyConfig) -> int:
    async with anyio.create_task_group() as tg:
        runtime = await lifecycle.start(config, tg, front="finish", need_fleet=True)
        finisher = runtime.finisher()
        if finisher is None:
            print("fleet-mcp-proxy finish: no episode store to finish from", file=sys.stderr)
            tg.cancel_scope.cancel()
            return 2
        report = await finisher.run()
        await runtime.pool.shutdown(backstop=False, timeout=30.0)
        if runtime.membership is not None:
            await runtime.membership.leave()
        await runtime.recorder.close(10.0)
        tg.cancel_scope.cancel()
    print(f"finish: {len(report.finished)} episode(s) finished, {len(report.left)} left unfinished", file=sys.stderr)
    if report.foreign:
        print(
            f"finish: {len(report.foreign)} episode(s) hold instances of another Fleet account or host; "
            "run finish with that account's config",
            file=sys.stderr,
        )
    return 0 if not report.left else 1
