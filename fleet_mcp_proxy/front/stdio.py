"""The stdio front: the process is the episode; EOF or a signal ends it, releasing everything."""

from __future__ import annotations

import signal

import anyio
from mcp.server.stdio import stdio_server

from .server import ProxyServer


async def serve_stdio(server: ProxyServer) -> None:
    """Serve one client on stdin/stdout until EOF, SIGTERM or SIGINT."""
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
        # The server lifespan (entered by run) ends every episode on the way out, shielded.
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
        tg.cancel_scope.cancel()
