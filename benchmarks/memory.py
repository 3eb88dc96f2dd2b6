"""Memory per idle episode: the proxy's RSS growth per idle episode vs the SDK backend's growth per idle session.

Direct: 128 sessions (initialize + tools/list) held open on a backend process of their own; RSS delta / 128
of that backend. Proxy: 128 episodes (initialize + tools/list + one call, so each backend link is open) held
open on a proxy process; RSS delta / 128 of the proxy (its backend's growth is recorded too). Baselines are
taken after a warm-up of a few sessions that are opened and closed, and each reading after a settle pause.
"""

from __future__ import annotations

import contextlib
import time

import anyio

from .common import Proc, kitchen, proxy, proxy_toml, ratio, session
from .report import Context, Row, SectionResult, at_most

SESSIONS = 128
WARM_UP = 8


async def _hold(url: str, count: int, call: bool, stack: contextlib.AsyncExitStack) -> None:
    for _ in range(count):
        client = await stack.enter_async_context(session(url))
        await client.list_tools()
        if call:
            await client.call_tool("echo", {"text": "warm"})


async def per_session_kb(measured: Proc, url: str, call: bool, settle: float) -> dict[str, float]:
    """RSS growth of `measured` while SESSIONS sessions to `url` stay open and idle."""
    async with contextlib.AsyncExitStack() as warm:
        await _hold(url, WARM_UP, call, warm)
    await anyio.sleep(settle)  # the pause is the subject: let closed sessions end and the heap settle
    baseline = measured.rss_kb()
    opened = time.perf_counter()
    async with contextlib.AsyncExitStack() as held:
        await _hold(url, SESSIONS, call, held)
        open_s = time.perf_counter() - opened
        await anyio.sleep(settle)
        loaded = measured.rss_kb()
        closing = time.perf_counter()
    return {
        "baseline_kb": baseline,
        "loaded_kb": loaded,
        "per_session_kb": round((loaded - baseline) / SESSIONS, 1),
        "open_s": round(open_s, 2),
        "close_s": round(time.perf_counter() - closing, 2),
    }


async def run(ctx: Context) -> SectionResult:
    settle = 1.0 if ctx.quick else 2.0
    async with kitchen(ctx.workdir, "mem-direct") as backend:
        direct = await per_session_kb(backend, backend.url, False, settle)
    async with kitchen(ctx.workdir, "mem-behind") as behind:
        config = proxy_toml({"a": {"url": behind.url}})
        async with proxy(ctx.workdir, "mem", config, ctx.workdir / "xdg-mem") as px:
            before = behind.rss_kb()
            proxied = await per_session_kb(px, px.url, True, settle)
            behind_kb = round((behind.rss_kb() - before) / SESSIONS, 1)
    r_value = ratio(proxied["per_session_kb"], direct["per_session_kb"])
    return SectionResult(
        raw={"sessions": SESSIONS, "backend_direct": direct, "proxy": proxied, "backend_behind_proxy_kb": behind_kb},
        rows=[
            Row(
                "memory",
                f"RSS per idle episode ({SESSIONS} idle)",
                f"{direct['per_session_kb']:.0f} KB",
                f"{proxied['per_session_kb']:.0f} KB",
                r_value,
                "ratio <= 1.3",
                at_most(r_value, 1.3),
            )
        ],
    )
