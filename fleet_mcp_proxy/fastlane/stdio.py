"""A stdio environment's pipes, shared by the SDK client and the stdio lane.

The SDK's `stdio_client` parses every line the environment writes into a model and writes every message it sends
through its own task. Here the proxy owns the pipes: a line answering one of the lane's requests (ids `fmp-s-N`)
goes straight to the waiting call, raw; every other line reaches the SDK client exactly as `stdio_client` would
hand it over. The process is started and stopped by the SDK's own helpers (mcp==2.3.0, pinned by
tests/test_quality.py), so spawning, environment and the shutdown sequence are the SDK's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as t
import pydantic_core
from mcp import StdioServerParameters
from mcp.client import stdio as sdk_stdio
from mcp.shared.message import SessionMessage

LANE_ID_PREFIX = "fmp-s-"
_WRITER_FLUSH = 0.5  # seconds for messages already accepted to reach the environment at shutdown


@dataclass(eq=False)
class AnswerSlot:
    arrived: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None  # None once arrived: the environment's output ended first


class StdioTap:
    """The lane's side of one environment's pipes: send raw lines, receive the answers to its own ids."""

    def __init__(self) -> None:
        self._stdin: anyio.abc.ByteSendStream | None = None
        self._writer: asyncio.StreamWriter | None = None  # under `_stdin`: lines handed over without a wait
        self._pending: dict[str, AnswerSlot] = {}
        self.open = False

    def attach(self, stdin: anyio.abc.ByteSendStream) -> None:
        self._stdin = stdin
        # anyio 4 keeps asyncio's writer under a private name; without it, every line is sent with `send`.
        writer = getattr(stdin, "_stream", None)
        self._writer = writer if isinstance(writer, asyncio.StreamWriter) else None
        self.open = True

    def expect(self, request_id: str) -> AnswerSlot:
        slot = AnswerSlot()
        self._pending[request_id] = slot
        return slot

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def send(self, line: bytes) -> None:
        """Write one JSON-RPC message (without its newline).

        Raises:
            anyio.BrokenResourceError, anyio.ClosedResourceError, OSError: the environment's input is gone.
        """
        if self._stdin is None or not self.open:
            raise anyio.ClosedResourceError
        await self._stdin.send(line + b"\n")  # one write: lines from concurrent senders never interleave

    def send_nowait(self, line: bytes) -> bool:
        """Hand one message to the pipe at once, without waiting for room: True if it was, False where the caller
        must `send` it. The pipe's own buffer takes what the environment has not read yet; `drain` waits for it."""
        writer = self._writer
        if not self.open or writer is None or writer.is_closing():
            return False
        writer.write(line + b"\n")  # whole lines: the SDK's writes go through the same writer, never interleaved
        return True

    async def drain(self) -> None:
        """Wait until the pipe took what `send_nowait` handed it (at once, unless the environment lags behind).

        Raises:
            OSError: the environment's input is gone.
        """
        if self._writer is not None:
            await self._writer.drain()

    def claim(self, raw: Any) -> bool:
        """Whether a parsed line is the answer to one of the lane's requests (then it is delivered)."""
        if not isinstance(raw, dict) or "method" in raw:
            return False
        request_id = raw.get("id")
        slot = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if slot is None:
            return False
        slot.message = raw
        slot.arrived.set()
        return True

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def close(self) -> None:
        """The environment's output ended: every call still waiting learns it now."""
        self.open = False
        for slot in self._pending.values():
            slot.arrived.set()
        self._pending.clear()


def _message(line: bytes, raw: Any) -> SessionMessage | Exception:
    """The line as the SDK client receives it from `stdio_client`: a message, or the parse error as a value."""
    try:
        if raw is not None:
            return SessionMessage(t.jsonrpc_message_adapter.validate_python(raw, by_name=False))
        return SessionMessage(t.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


@asynccontextmanager
async def tapped_stdio_client(
    server: StdioServerParameters, tap: StdioTap, errlog: TextIO = sys.stderr
) -> AsyncIterator[tuple[Any, Any]]:
    """`mcp.client.stdio.stdio_client`, with the lane's answers taken off the environment's output first."""
    command = await sdk_stdio._get_executable_command(server.command)
    process: Any = await sdk_stdio._create_platform_compatible_process(
        command=command,
        args=server.args,
        env=sdk_stdio.get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )
    # No await until the task group is entered: a cancellation in the gap would leak the process.
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()
    tap.attach(process.stdin)

    async def stdout_reader() -> None:
        buffer = b""
        try:
            async with read_writer:
                try:
                    async for chunk in process.stdout:
                        lines = (buffer + chunk).split(b"\n")
                        buffer = lines.pop()
                        for line in lines:
                            raw: Any = None
                            if tap.waiting:  # parse once: the lane's answer, or the SDK's message
                                try:
                                    raw = pydantic_core.from_json(line)
                                except ValueError:
                                    raw = None
                                if tap.claim(raw):
                                    continue
                            try:
                                await read_writer.send(_message(line, raw))
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return
                finally:
                    tap.close()
                    await sdk_stdio._drain_stdout(process)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError):
            pass  # shutdown closed the pipe under the read, or the environment died: the session sees the close

    async def stdin_writer() -> None:
        try:
            async with write_reader:
                async for session_message in write_reader:
                    data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(data.encode("utf-8") + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_writer.aclose()  # the session sees the connection end instead of a request hanging
        finally:
            writer_done.set()

    async def shutdown() -> None:
        tap.close()
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(_WRITER_FLUSH):
            await writer_done.wait()
        await sdk_stdio._stop_server_process(process)
        for stream in (read_stream, write_stream, read_writer, write_reader):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await shutdown()
            tg.cancel_scope.cancel()
