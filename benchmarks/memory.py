"""Memory per idle episode, two figures: the proxy process alone, and the whole system (proxy + environment).

Every session, direct or proxied, makes the same requests before it goes idle: initialize, tools/list and one
`echo` call (the call opens the proxy's backend link; made directly too, so a backend holds the same per-session
state either way). Direct: 128 such sessions held open on a backend process of their own; RSS delta / 128 of that
backend. Proxy: 128 episodes held open on a proxy process with its own backend; RSS delta / 128 of the proxy, and
of the backend behind it. Figures: proxy per episode vs direct backend per session (target 1.3), and (proxy +
backend behind it) per episode vs direct backend per session (target 1.5). Baselines are taken after a warm-up
of a few sessions that are opened and closed, and each reading after a settle pause.
"""

from __future__ import annotations

import contextlib
import time

import anyio

from .common import Proc, kitchen, proxy, proxy_toml, ratio, session
from .report import Context, Row, SectionResult, at_most

SESSIONS = 128
WARM_UP = 8
PROXY_TARGET = 1.3
SYSTEM_TARGET = 1.5


async def _hold(url: str, count: int, stack: contextlib.AsyncExitStack) -> None:
    for _ in range(count):
        client = await stack.enter_async_context(session(url))
        await client.list_tools()
        await client.call_tool("echo", {"text": "warm"})


def system_per_episode_kb(proxy_kb: float, behind_kb: float) -> float:
    """Whole-system growth per proxied episode: the proxy's plus the environment's behind it."""
    return round(proxy_kb + behind_kb, 1)


async def per_session_kb(measured: Proc, url: str, settle: float, behind: Proc | None = None) -> dict[str, float]:
    """RSS growth of `measured` (and of `behind`, the backend behind a proxy) while SESSIONS sessions to `url`
    stay open and idle."""
    async with contextlib.AsyncExitStack() as warm:
        await _hold(url, WARM_UP, warm)
    await anyio.sleep(settle)  # the pause is the subject: let closed sessions end and the heap settle
    baseline = measured.rss_kb()
    behind_baseline = behind.rss_kb() if behind is not None else 0
    opened = time.perf_counter()
    async with contextlib.AsyncExitStack() as held:
        await _hold(url, SESSIONS, held)
        open_s = time.perf_counter() - opened
        await anyio.sleep(settle)
        loaded = measured.rss_kb()
        behind_loaded = behind.rss_kb() if behind is not None else 0
        closing = time.perf_counter()
    figures: dict[str, float] = {
        "baseline_kb": baseline,
        "loaded_kb": loaded,
        "per_session_kb": round((loaded - baseline) / SESSIONS, 1),
        "open_s": round(open_s, 2),
        "close_s": round(time.perf_counter() - closing, 2),
    }
    if behind is not None:
        figures |= {
            "behind_baseline_kb": behind_baseline,
            "behind_loaded_kb": behind_loaded,
            "behind_per_session_kb": round((behind_loaded - behind_baseline) / SESSIONS, 1),
        }
    return figures


async def run(ctx: Context) -> SectionResult:
    settle = 1.0 if ctx.quick else 2.0
    async with kitchen(ctx.workdir, "mem-direct") as backend:
        direct = await per_session_kb(backend, backend.url, settle)
    async with kitchen(ctx.workdir, "mem-behind") as behind:
        config = proxy_toml({"a": {"url": behind.url}})
        async with proxy(ctx.workdir, "mem", config, ctx.workdir / "xdg-mem") as px:
            proxied = await per_session_kb(px, px.url, settle, behind)
    direct_kb, behind_kb = direct["per_session_kb"], proxied["behind_per_session_kb"]
    system_kb = system_per_episode_kb(proxied["per_session_kb"], behind_kb)
    r_proxy = ratio(proxied["per_session_kb"], direct_kb)
    r_system = ratio(system_kb, direct_kb)
    return SectionResult(
        raw={
            "sessions": SESSIONS,
            "backend_direct": direct,
            "proxy": proxied,
            "backend_behind_proxy_kb": behind_kb,
            "system_per_episode_kb": system_kb,
        },
        rows=[
            Row(
                "memory",
                f"RSS per idle episode ({SESSIONS} idle)",
                f"{direct_kb:.0f} KB",
                f"{proxied['per_session_kb']:.0f} KB",
                r_proxy,
                f"ratio <= {PROXY_TARGET}",
                at_most(r_proxy, PROXY_TARGET),
            ),
            Row(
                "memory",
                f"whole system per idle episode ({SESSIONS} idle)",
                f"{direct_kb:.0f} KB",
                f"{system_kb:.0f} KB (proxy {proxied['per_session_kb']:.0f} + env {behind_kb:.0f})",
                r_system,
                f"ratio <= {SYSTEM_TARGET}",
                at_most(r_system, SYSTEM_TARGET),
            ),
        ],
    )
