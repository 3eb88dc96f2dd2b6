"""Setup: a new session's connect (initialize) to its first `tools/list` complete, direct vs through the proxy.

Three proxy cases: a cold process (fresh XDG_STATE_HOME: no catalog cache, first episode ever); a new process
sharing a cold run's XDG_STATE_HOME (the catalog cache on disk is warm), its first episode; and that process's
later episodes, interleaved with direct sessions in ABBA order (100 each, 20 with `--quick`): the figures the
targets apply to, p50, mean and p99 each. The kitchen backend pages its tool list by 3 and the proxy answers in
one page; the figure is the first `tools/list` request either way. Nothing the proxy does for an episode
(provisioning included) is moved out of the window: the session is timed until its first `tools/list` result.
"""

from __future__ import annotations

import time

from .common import http_client, kitchen, ms_since, proxy, proxy_toml, ratio, session, summary
from .report import Context, Row, SectionResult, at_most, fmt_ms

TARGET = 1.3  # each of p50, mean and p99


async def first_list(url: str) -> float:
    """ms from opening a session to its first tools/list result (one request: the first page)."""
    async with http_client(4) as http:  # outside the timing: a client process has its pool already
        start = time.perf_counter()
        async with session(url, http=http) as client:
            listed = await client.list_tools()
            elapsed = ms_since(start)
    if not any(tool.name == "echo" for tool in listed.tools):
        raise RuntimeError(f"tools/list at {url} lacks echo")
    return elapsed


async def run(ctx: Context) -> SectionResult:
    cold_runs, rounds = (1, 20) if ctx.quick else (3, 100)
    result = SectionResult()
    async with kitchen(ctx.workdir, "setup") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        await first_list(backend.url)  # the backend's own first-session costs stay out of the figures
        cold: list[float] = []
        for i in range(cold_runs):
            async with proxy(ctx.workdir, f"setup-cold-{i}", config, ctx.workdir / f"xdg-setup-{i}") as px:
                cold.append(await first_list(px.url))
        async with proxy(ctx.workdir, "setup-warm", config, ctx.workdir / "xdg-setup-0") as px:
            warm_first = await first_list(px.url)
            times: dict[str, list[float]] = {"direct": [], "proxy": []}
            for r in range(rounds):
                order = [("direct", backend.url), ("proxy", px.url)]
                for name, url in order if r % 2 == 0 else order[::-1]:
                    times[name].append(await first_list(url))
    d, p, c = summary(times["direct"]), summary(times["proxy"]), summary(cold)
    result.raw = {
        "direct": d,
        "proxy_warm_cache": p,
        "proxy_cold_process_first": c,
        "proxy_warm_process_first": warm_first,
    }
    result.rows += [
        Row(
            "setup",
            f"connect -> tools/list, warm cache {stat}",
            fmt_ms(d[stat]),
            fmt_ms(p[stat]),
            ratio(p[stat], d[stat]),
            f"ratio <= {TARGET}",
            at_most(ratio(p[stat], d[stat]), TARGET),
        )
        for stat in ("p50", "mean", "p99")
    ]
    result.rows += [
        Row(
            "setup",
            "first episode, new process, warm cache",
            fmt_ms(d["p50"]),
            fmt_ms(warm_first),
            ratio(warm_first, d["p50"]),
        ),
        Row(
            "setup",
            f"first episode, cold process (median of {cold_runs})",
            fmt_ms(d["p50"]),
            fmt_ms(c["p50"]),
            ratio(c["p50"], d["p50"]),
        ),
    ]
    return result
