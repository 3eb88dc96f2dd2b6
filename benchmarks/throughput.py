"""Calls per second with 1, 8, 32 and 128 concurrent sessions, direct vs through the proxy, streamable HTTP.

Each session is its own SDK client (handshake era, its own HTTP connection pool) calling `echo` back to back
for a fixed window. Windows alternate direct/proxy in ABBA order. The load generator (this process), the proxy
and the backend share the machine's cores, so the absolute rates are bounded by all three together.
"""

from __future__ import annotations

import contextlib
import time

import anyio
from mcp import Client

from .common import kitchen, proxy, proxy_toml, ratio, session
from .report import Context, Row, SectionResult, at_least

LEVELS = (1, 8, 32, 128)
TARGET_LEVEL = 32
TARGET = 0.9  # calls/s ratio at TARGET_LEVEL


async def _open(stack: contextlib.AsyncExitStack, url: str, count: int, call: bool) -> list[Client]:
    clients: list[Client] = []
    for _ in range(count):
        client = await stack.enter_async_context(session(url))
        await client.list_tools()
        if call:  # the proxy episode's backend link is opened by its first call
            await client.call_tool("echo", {"text": "warm"})
        clients.append(client)
    return clients


async def window(clients: list[Client], seconds: float, samples: list[float] | None = None) -> dict[str, float]:
    """Every client calls back to back until the window closes; completed calls per second. Each call's
    latency (ms) goes to `samples` when given."""
    counts = [0] * len(clients)
    errors = [0]
    end = time.perf_counter() + seconds

    async def worker(index: int, client: Client) -> None:
        while (started := time.perf_counter()) < end:
            result = await client.call_tool("echo", {"text": "x"})
            if samples is not None:
                samples.append((time.perf_counter() - started) * 1000)
            counts[index] += 1
            errors[0] += bool(result.is_error)

    start = time.perf_counter()
    with anyio.fail_after(seconds + 120):
        async with anyio.create_task_group() as tg:
            for index, client in enumerate(clients):
                tg.start_soon(worker, index, client)
    elapsed = time.perf_counter() - start
    return {"calls": sum(counts), "seconds": round(elapsed, 3), "errors": errors[0]}


async def run(ctx: Context) -> SectionResult:
    seconds, rounds = (1.5, 1) if ctx.quick else (4.0, 2)
    result = SectionResult(raw={"window_seconds": seconds, "windows_per_path_per_level": rounds, "levels": {}})
    top = max(LEVELS)
    async with kitchen(ctx.workdir, "tput") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        async with (
            proxy(ctx.workdir, "tput", config, ctx.workdir / "xdg-tput") as px,
            contextlib.AsyncExitStack() as st,
        ):
            paths = {"direct": await _open(st, backend.url, top, False), "proxy": await _open(st, px.url, top, True)}
            for level in LEVELS:
                windows: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
                for r in range(rounds):
                    order = ["direct", "proxy"] if r % 2 == 0 else ["proxy", "direct"]
                    for name in order:
                        windows[name].append(await window(paths[name][:level], seconds))
                rates = {
                    name: round(sum(w["calls"] for w in ws) / sum(w["seconds"] for w in ws), 1)
                    for name, ws in windows.items()
                }
                result.raw["levels"][str(level)] = {"windows": windows, "calls_per_s": rates}
                r_value = ratio(rates["proxy"], rates["direct"])
                target = level == TARGET_LEVEL
                result.rows.append(
                    Row(
                        "throughput",
                        f"calls/s, {level} sessions",
                        f"{rates['direct']:.0f}/s",
                        f"{rates['proxy']:.0f}/s",
                        r_value,
                        f"ratio >= {TARGET}" if target else "",
                        at_least(r_value, TARGET) if target else None,
                    )
                )
    return result
