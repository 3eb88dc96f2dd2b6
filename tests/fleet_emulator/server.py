"""Running the emulator under uvicorn: in this event loop (`running_emulator`) or as its own process (`serve`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp

from .clock import Clock
from .emulator import Emulator
from .faults import Faults

READY_PREFIX = "FLEET_EMULATOR_READY"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket. IPPROTO_TCP matters: with proto 0 asyncio leaves Nagle on (~44 ms per answer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections queue until uvicorn accepts them: no polling for readiness
    return sock


def _uvicorn(emu: Emulator, *, nested: bool, app: ASGIApp | None = None) -> uvicorn.Server:
    config = uvicorn.Config(app or emu.app, lifespan="on", log_level="warning", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if nested:
        # Inside another program's event loop: leave its signal handlers alone.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server


async def _run(server: uvicorn.Server, sock: socket.socket, emu: Emulator, done: anyio.Event | None = None) -> None:
    try:
        await server.serve([sock])
    finally:
        if done is not None:
            done.set()
    if not emu.started.is_set():
        raise RuntimeError("the Fleet emulator did not start (its lifespan failed; see the log)")


@contextlib.asynccontextmanager
async def running_emulator(
    api_key: str = "emulator-key",
    *,
    faults: Faults | None = None,
    clock: Clock | None = None,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    **options: Any,
) -> AsyncIterator[Emulator]:
    """The emulator under uvicorn on a free loopback port, in this event loop; stopped and cleaned up on exit.

    `options` go to `Emulator` (instance_limit, catalog, regions, sweep_interval, require_runner_token,
    data_root). `wrap`, if given, wraps the app in a test's own ASGI layer (to record or bend what the proxy
    sees). The yielded emulator has `.base_url` (no trailing slash), `.state`, `.faults` and `.clock`.
    """
    emu = Emulator(api_key, faults=faults, clock=clock, **options)
    sock = bind_loopback()
    emu.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = _uvicorn(emu, nested=True, app=wrap(emu.app) if wrap is not None else None)
    done = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run, server, sock, emu, done)
            with anyio.fail_after(START_TIMEOUT):
                await emu.started.wait()
            try:
                yield emu
            finally:
                # A graceful shutdown (lifespan exit: instances stopped, data removed) even when the body
                # failed: otherwise the task group would cancel uvicorn halfway through.
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_TIMEOUT):
                    await done.wait()
    finally:
        sock.close()


async def serve(emu: Emulator, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Process mode: serve until SIGINT/SIGTERM; `announce(base_url)` once the emulator is ready."""
    emu.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = _uvicorn(emu, nested=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_run, server, sock, emu)
        with anyio.fail_after(START_TIMEOUT):
            await emu.started.wait()
        announce(emu.base_url)
