"""What every section shares: backend and proxy processes, SDK client sessions, RSS, and summaries of samples."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KITCHEN = ROOT / "tests" / "backends" / "kitchen.py"
EMULATOR = ROOT / "tests" / "fleet_emulator" / "__main__.py"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Limits high enough that the benchmark measures the proxy, not its admission control.
OPEN_LIMITS: dict[str, Any] = {
    "idle_timeout": 3600,
    "max_sessions": 100_000,
    "limit_concurrency": 100_000,
    "max_episodes_per_principal": 0,
    "max_calls_per_principal": 0,
    "max_leases_per_principal": 0,
}

Mode = Literal["legacy", "2026-07-28"]

# One TLS context for every client here: httpx2 would build (and load CA certificates into) one per client,
# about 30 ms and 800 KB each, which would swamp the load generator. Everything here is plain loopback HTTP.
_TLS = ssl.create_default_context()


@dataclass
class Proc:
    """A process started by the benchmark; its stdout and stderr go to `log`."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_tail(self, lines: int = 8) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


async def _accepting(url: str, popen: subprocess.Popen[bytes]) -> None:
    """Wait (bounded) until the URL's port accepts: kitchen and `serve` announce their URL before listening."""
    parsed = httpx2.URL(url)
    with anyio.fail_after(START_TIMEOUT):
        while True:
            try:
                stream = await anyio.connect_tcp(parsed.host, parsed.port or 80)
            except OSError:
                if popen.poll() is not None:
                    raise RuntimeError(f"process {popen.pid} exited ({popen.returncode}) before listening") from None
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


@contextlib.asynccontextmanager
async def process(
    args: list[str], pattern: str, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Proc]:
    """Start a process, wait (bounded) until its output matches `pattern`, stop it on exit."""
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    proc = Proc(popen, "", log)
    try:
        regex = re.compile(pattern)
        with anyio.fail_after(START_TIMEOUT):
            while not (match := regex.search(await anyio.Path(log).read_text(encoding="utf-8", errors="replace"))):
                if popen.poll() is not None:
                    raise RuntimeError(f"{Path(args[1]).name} exited ({popen.returncode}):\n{proc.log_tail()}")
                await anyio.sleep(0.05)  # another process's output: nothing to await but the file
        proc.url = match.group(1)
        await _accepting(proc.url, popen)
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, popen)


def kitchen(workdir: Path, name: str) -> contextlib.AbstractAsyncContextManager[Proc]:
    """The kitchen test backend serving streamable HTTP in its own process."""
    return process([PY, str(KITCHEN), name, "--http"], r"READY (\S+)", workdir / f"kitchen-{name}.log")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string accepts JSON's escapes


def proxy_toml(envs: Mapping[str, Mapping[str, Any]], fleet: Mapping[str, Any] | None = None, **proxy: Any) -> str:
    """A config file: the open limits plus `proxy` under [proxy], one [env.NAME] per entry, an optional [fleet]."""
    sections: list[tuple[str, Mapping[str, Any]]] = [("proxy", {**OPEN_LIMITS, **proxy})]
    if fleet is not None:
        sections.append(("fleet", fleet))
    sections += [(f"env.{name}", body) for name, body in envs.items()]
    lines: list[str] = []
    for title, body in sections:
        lines.append(f"[{title}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in body.items()]
    return "\n".join(lines) + "\n"


def proxy(
    workdir: Path,
    name: str,
    config: str,
    xdg: Path,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> contextlib.AbstractAsyncContextManager[Proc]:
    """The proxy (`serve`, HTTP, a free port) in its own process with its own XDG_STATE_HOME; `extra_args` go
    after the others (e.g. `--store URL`)."""
    path = workdir / f"proxy-{name}.toml"
    path.write_text(config, encoding="utf-8")
    xdg.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_STATE_HOME": str(xdg), **(extra_env or {})}
    args = [PY, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--log-level", "WARNING", "--config", str(path)]
    args += extra_args
    return process(args, r"listening on (\S+)", workdir / f"proxy-{name}.log", env)


def http_client(connections: int = 100) -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx2.AsyncClient(timeout=httpx2.Timeout(60.0, read=300.0), limits=limits, verify=_TLS)


@contextlib.asynccontextmanager
async def session(url: str, mode: Mode = "legacy", http: httpx2.AsyncClient | None = None) -> AsyncIterator[Client]:
    """An SDK client session over streamable HTTP, no SSE event ceiling; owns its HTTP client unless given one."""
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(http_client(4))
        transport = streamable_http_client(url, http_client=http, max_sse_event_size=None)
        yield await stack.enter_async_context(Client(transport, mode=mode, cache=None))


async def list_all(client: Client) -> list[str]:
    """Every tool name, following cursors (the kitchen backend pages its list by 3)."""
    names: list[str] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        names += [tool.name for tool in page.tools]
        if not (cursor := page.next_cursor):
            return names


def describe(exc: BaseException) -> str:
    """The leaf exceptions of a (nested) exception group, one line each."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return "".join(traceback.format_exception_only(exc)).strip()


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    """n, p50, p99 (nearest rank), mean, min, max of samples in ms."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "mean": round(statistics.fmean(ordered), 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def ratio(proxied: float | None, direct: float | None) -> float | None:
    if proxied is None or not direct:
        return None
    return round(proxied / direct, 3)
