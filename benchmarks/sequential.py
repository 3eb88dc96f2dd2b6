"""Sequential `echo` latency per call, direct vs through the proxy, over streamable HTTP and over stdio.

Both paths run in the handshake era, each client in this process. Calls alternate in blocks (ABBA order),
so drift and neighbours' load hit both paths alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from .common import KITCHEN, PY, ROOT, kitchen, ms_since, proxy, proxy_toml, ratio, session, summary
from .report import Context, Row, SectionResult, at_most, fmt_ms

BLOCK = 50
WARM_CALLS = 30


async def interleave(direct: Client, proxied: Client, calls: int) -> dict[str, list[float]]:
    """Per-call times (ms) of `calls` echo calls on each path, in alternating blocks after a warm-up."""
    for client in (direct, proxied):  # provisioning, connection pools, first-call imports
        await client.list_tools()
        for _ in range(WARM_CALLS):
            await client.call_tool("echo", {"text": "warm"})
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    for block in range(max(1, calls // BLOCK)):
        order = [("direct", direct), ("proxy", proxied)]
        for name, client in order if block % 2 == 0 else order[::-1]:
            for _ in range(BLOCK):
                start = time.perf_counter()
                result = await client.call_tool("echo", {"text": "hello"})
                times[name].append(ms_since(start))
                if result.is_error:
                    raise RuntimeError(f"echo failed on the {name} path: {result.content}")
    return times


@contextlib.asynccontextmanager
async def stdio_pair(ctx: Context) -> AsyncIterator[tuple[Client, Client]]:
    """A kitchen over stdio, and a proxy over stdio whose environment is another kitchen over stdio."""
    xdg = ctx.workdir / "xdg-stdio"
    xdg.mkdir(parents=True, exist_ok=True)
    direct = StdioServerParameters(command=PY, args=[str(KITCHEN), "a"], cwd=str(ROOT))
    proxied = StdioServerParameters(
        command=PY,
        args=["-m", "fleet_mcp_proxy", "serve", "--stdio", "--log-level", "WARNING", "--env", f"a={PY} {KITCHEN} a"],
        env={"PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(xdg)},
        cwd=str(ROOT),
    )
    with (ctx.workdir / "stdio-stderr.log").open("w") as errlog:
        async with (
            Client(stdio_client(direct, errlog=errlog), mode="legacy", cache=None) as d,
            Client(stdio_client(proxied, errlog=errlog), mode="legacy", cache=None) as p,
        ):
            yield d, p


def _rows(transport: str, times: dict[str, list[float]]) -> tuple[dict[str, object], list[Row]]:
    d, p = summary(times["direct"]), summary(times["proxy"])
    raw: dict[str, object] = {"direct": d, "proxy": p}
    rows = [
        Row(
            "sequential",
            f"{transport} echo p50",
            fmt_ms(d["p50"]),
            fmt_ms(p["p50"]),
            ratio(p["p50"], d["p50"]),
            "ratio <= 1.3",
            at_most(ratio(p["p50"], d["p50"]), 1.3),
        ),
        Row("sequential", f"{transport} echo p99", fmt_ms(d["p99"]), fmt_ms(p["p99"]), ratio(p["p99"], d["p99"])),
    ]
    return raw, rows


async def run(ctx: Context) -> SectionResult:
    calls = 300 if ctx.quick else 1000
    result = SectionResult(raw={"calls_per_path": calls, "block": BLOCK})
    async with kitchen(ctx.workdir, "seq") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        async with (
            proxy(ctx.workdir, "seq", config, ctx.workdir / "xdg-seq") as px,
            session(backend.url) as direct,
            session(px.url) as proxied,
        ):
            http_times = await interleave(direct, proxied, calls)
    raw, rows = _rows("http", http_times)
    result.raw["http"] = raw
    result.rows += rows
    async with stdio_pair(ctx) as (direct, proxied):
        stdio_times = await interleave(direct, proxied, calls)
    raw, rows = _rows("stdio", stdio_times)
    result.raw["stdio"] = raw
    result.rows += rows
    return result
