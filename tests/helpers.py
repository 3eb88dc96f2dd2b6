"""Shared test plumbing: real backends, a real proxy (in-process or as a process), real clients."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from fleet_mcp_proxy.cli import _bind, environments_of, tasks_for
from fleet_mcp_proxy.config import ProxyConfig, load_config
from fleet_mcp_proxy.front.episodes import ProxyState, StateHolder
from fleet_mcp_proxy.front.http import build_app
from fleet_mcp_proxy.front.server import build_server
from fleet_mcp_proxy.front.slowclients import uvicorn_config
from fleet_mcp_proxy.tls import client_context

ROOT = Path(__file__).resolve().parent.parent
KITCHEN = ROOT / "tests" / "backends" / "kitchen.py"
PY = sys.executable


def kitchen_cmd(name: str) -> str:
    return f"{PY} {KITCHEN} {name}"


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


async def read_line_matching(
    stream: Any, pattern: str, timeout: float = 30, seen: list[str] | None = None
) -> re.Match[str]:
    """Read lines from a subprocess pipe (in a thread) until one matches; bounded. Lines read go to `seen`."""
    regex = re.compile(pattern)
    with anyio.fail_after(timeout):
        while True:
            line = await anyio.to_thread.run_sync(stream.readline, abandon_on_cancel=True)
            if seen is not None:
                seen.append(line)
            if not line:
                raise RuntimeError(f"process closed its output before printing {pattern!r}")
            if match := regex.search(line):
                return match


@contextlib.asynccontextmanager
async def kitchen_http(name: str, events: Path | None = None) -> AsyncIterator[str]:
    """A kitchen backend serving streamable HTTP in its own process."""
    env = child_env(**({"KITCHEN_EVENTS": str(events)} if events else {}))
    proc = subprocess.Popen([PY, str(KITCHEN), name, "--http"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        match = await read_line_matching(proc.stdout, r"READY (\S+)")
        yield match.group(1)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
    return proc.returncode


@dataclass
class RunningProxy:
    url: str
    holder: StateHolder

    @property
    def state(self) -> ProxyState:
        assert self.holder.state is not None
        return self.holder.state


@contextlib.asynccontextmanager
async def proxy_http(config: ProxyConfig) -> AsyncIterator[RunningProxy]:
    """The real proxy app under uvicorn on a free loopback port, in this event loop."""
    holder = StateHolder()
    server = build_server(config, environments_of(config), holder, tasks=tasks_for(config))
    app = build_app(config, server, holder)
    sock = _bind("127.0.0.1", 0)
    sock.listen(128)  # connections queue until uvicorn accepts: no polling for readiness
    uv = uvicorn.Server(uvicorn_config(app, config))  # what `serve` runs: header deadline, concurrency cap
    uv.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    served = anyio.Event()

    async def serve() -> None:
        try:
            await uv.serve([sock])
        finally:
            served.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(30):
            await holder.started.wait()
        try:
            yield RunningProxy(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", holder)
        finally:
            # A graceful shutdown (episodes ended, instances released) even when the body failed: otherwise
            # the task group would cancel uvicorn halfway and releases would outlive the test.
            uv.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(config.shutdown_grace + 10):
                await served.wait()


def config_with(*envs: str, **proxy: Any) -> ProxyConfig:
    return load_config(overrides=proxy, env_args=tuple(envs))


def http_client(url: str, mode: str = "legacy", headers: dict[str, str] | None = None, **kwargs: Any) -> Client:
    """An SDK client over streamable HTTP with no SSE event ceiling (large results)."""
    # One shared TLS context: a client's own would load the CA bundle, blocking the loop the proxy runs in.
    http = httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=None), verify=client_context())
    transport = streamable_http_client(url, http_client=http, max_sse_event_size=None)
    return Client(transport, mode=mode, cache=None, **kwargs)  # type: ignore[arg-type]


def stdio_proxy_params(envs: Sequence[str], *extra: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    args = ["-m", "fleet_mcp_proxy", "serve", "--stdio", "--log-level", "WARNING", *extra]
    for spec in envs:
        args += ["--env", spec]
    env = env or {"PYTHONPATH": str(ROOT), "XDG_STATE_HOME": os.environ.get("XDG_STATE_HOME", "")}
    return StdioServerParameters(command=PY, args=args, env=env, cwd=str(ROOT))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split()[2] != "Z"
    return False


async def wait_until(predicate: Any, timeout: float = 15, what: str = "condition") -> None:
    """Poll a cheap predicate until true; bounded (for effects in other processes)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
