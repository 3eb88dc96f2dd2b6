"""The stdio front: the process is the episode; EOF or a signal ends it, releasing everything."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

import anyio
import anyio.abc
import mcp_types as t
import pydantic_core
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from .episodes import StateHolder
from .server import ProxyServer
from .stdio_lane import StdioLane
from .stdio_pipes import LineWriter, claimed_stdio, read_lines

_FLUSH = 2.0  # seconds for the server's last answers to be written at the end


async def serve_stdio(server: ProxyServer, holder: StateHolder | None = None) -> None:
    """Serve one client on stdin/stdout until EOF, SIGTERM or SIGINT.

    With `holder` (the stdio lane on, and stdin/stdout pipes), the proxy reads and writes the pipes itself and
    the lane serves plain tool calls; otherwise the SDK's `stdio_server` carries everything.
    """
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
        # The server lifespan (entered by run) ends every episode on the way out, shielded.
        with claimed_stdio() if holder is not None else nullcontext() as fds:
            if fds is not None and holder is not None:
                await _serve_pipes(server, holder, *fds)
            else:
                async with stdio_server() as (read, write):
                    await server.run(read, write, server.create_initialization_options())
        tg.cancel_scope.cancel()


def _validated(line: bytes) -> tuple[object, t.JSONRPCMessage | Exception]:
    """The parsed line and the message the SDK server would receive (or the error it would, as a value)."""
    try:
        raw = pydantic_core.from_json(line)
        return raw, t.jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except ValueError:
        pass
    try:  # the SDK's own reading, replacement characters and all, so the error is the one it would give
        return None, t.jsonrpc_message_adapter.validate_json(line.decode("utf-8", "replace"), by_name=False)
    except ValueError as exc:
        return None, exc


async def _serve_pipes(server: ProxyServer, holder: StateHolder, read_fd: int, write_fd: int) -> None:
    out = LineWriter(write_fd)
    written = anyio.Event()
    to_server, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    async with anyio.create_task_group() as tg:
        lane = StdioLane(holder, out, tg)

        async def reader() -> None:
            async with to_server:
                async for line in read_lines(read_fd):
                    raw, message = _validated(line)
                    if isinstance(message, Exception):
                        await to_server.send(message)
                        continue
                    if isinstance(raw, dict):
                        lane.seen_request(raw)
                        if lane.take(raw):
                            continue
                    await to_server.send(SessionMessage(message))

        async def writer() -> None:
            async with from_server, _setting(written):
                async for session_message in from_server:
                    lane.seen_answer(session_message.message)
                    data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await out.write(data.encode("utf-8") + b"\n")

        tg.start_soon(reader)
        tg.start_soon(writer)
        await server.run(read_stream, write_stream, server.create_initialization_options())
        write_stream.close()
        with anyio.move_on_after(_FLUSH, shield=True):  # the server's last answers reach the client
            await written.wait()
        tg.cancel_scope.cancel()


@asynccontextmanager
async def _setting(event: anyio.Event) -> AsyncIterator[None]:
    try:
        yield
    finally:
        event.set()
