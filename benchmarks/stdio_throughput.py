"""Calls per second with 32 concurrent callers on one stdio session, direct vs through `serve --stdio`.

A stdio client is one process with one session, so concurrency there means callers sharing that session: 32 tasks
call `echo` back to back on it for a fixed window. Windows alternate direct/proxy in ABBA order; the environment
behind the proxy is the same kitchen over stdio.
"""

from __future__ import annotations

from .common import ratio
from .report import Context, Row, SectionResult, at_least
from .sequential import stdio_pair
from .throughput import window

CALLERS = 32
TARGET = 0.8


async def run(ctx: Context) -> SectionResult:
    seconds, rounds = (1.5, 2) if ctx.quick else (4.0, 2)
    result = SectionResult(raw={"window_seconds": seconds, "windows_per_path": rounds, "callers": CALLERS})
    async with stdio_pair(ctx) as (direct, proxied):
        paths = {"direct": direct, "proxy": proxied}
        for client in paths.values():  # provisioning, first-call imports
            await client.list_tools()
            await client.call_tool("echo", {"text": "warm"})
        windows: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
        for r in range(rounds):
            for name in ["direct", "proxy"] if r % 2 == 0 else ["proxy", "direct"]:
                windows[name].append(await window([paths[name]] * CALLERS, seconds))
    rates = {
        name: round(sum(w["calls"] for w in ws) / sum(w["seconds"] for w in ws), 1) for name, ws in windows.items()
    }
    result.raw.update(windows=windows, calls_per_s=rates)
    value = ratio(rates["proxy"], rates["direct"])
    result.rows.append(
        Row(
            "stdio throughput",
            f"stdio calls/s, {CALLERS} callers",
            f"{rates['direct']:.0f}/s",
            f"{rates['proxy']:.0f}/s",
            value,
            f"ratio >= {TARGET}",
            at_least(value, TARGET),
        )
    )
    return result
