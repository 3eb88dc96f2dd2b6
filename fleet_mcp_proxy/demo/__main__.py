"""`python -m fleet_mcp_proxy.demo`: serve one tracker instance over stdio (default) or streamable HTTP."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import anyio

from .db import prepare_instance
from .server import build_server

log = logging.getLogger("fleet_mcp_proxy.demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fleet_mcp_proxy.demo",
        description="Serve the demo issue tracker (one instance) as an MCP server.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="instance directory holding seed.sqlite and current.sqlite (created and seeded if missing); "
        "default: a fresh temporary directory removed at exit",
    )
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default: %(default)s)")
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default: %(default)s)",
    )
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into KeyboardInterrupt so the `with` blocks in main() unwind and the temporary
    # data directory is removed; the default SIGTERM action would exit without cleanup.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # stderr only: on stdio, stdout carries the protocol.
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as stack:
        data_dir: Path = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracker-")))
        current = prepare_instance(data_dir)
        log.info("tracker instance at %s", data_dir)
        server = build_server(current)
        try:
            if args.http:
                anyio.run(lambda: server.run_streamable_http_async(host=args.host, port=args.port))
            else:
                anyio.run(server.run_stdio_async)
        except KeyboardInterrupt:
            log.info("interrupted, shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
