"""Many concurrent episodes on one proxy process, 0 errors expected.

Phase 1 opens the episodes: each makes one tools/list and one `echo` call, at most ARRIVALS starting at a
time (a new episode's first call opens its backend link, which is the costly step). The episodes stay live
(keyed episodes end on idle timeout), so after phase 1 the proxy holds all of them. Phase 2: every episode
calls `echo` once more, all at the same moment. The proxy's RSS is read between the phases.

Clients are 2026-07-28-era SDK clients keyed by `?episode=KEY` (no handshake, no GET stream: the cheapest
real client here) sharing one HTTP connection pool with as many connections as episodes.
Setting ARRIVALS to the episode count turns phase 1 into a cold burst (every first call at once).
"""

from __future__ import annotations

import time
import uuid

import anyio
import mcp_types as t
from mcp import Client

from .common import Mode, describe, http_client, kitchen, proxy, proxy_toml, raise_fd_limit, session
from .report import Context, Row, SectionResult

MODE: Mode = "2026-07-28"
ARRIVALS = 64
OP_TIMEOUT = 120.0  # per request: a lost response is an error, not a hang


def _check(result: t.CallToolResult, text: str) -> str | None:
    content = result.content[0] if result.content else None
    if result.is_error or not isinstance(content, t.TextContent) or content.text != text:
        detail = content.text[:160] if isinstance(content, t.TextContent) else ""
        return f"wrong result (is_error={result.is_error}): {detail}"
    return None


async def run(ctx: Context) -> SectionResult:
    episodes = 200 if ctx.quick else 1000
    fd_limit = raise_fd_limit()  # before the processes start: they inherit it
    errors: dict[str, list[str]] = {"open": [], "burst": []}
    opened = anyio.Event()
    go = anyio.Event()
    done = [0]
    limiter = anyio.CapacityLimiter(ARRIVALS)

    async def call(client: Client, phase: str, text: str) -> bool:
        try:
            with anyio.fail_after(OP_TIMEOUT):
                problem = _check(await client.call_tool("echo", {"text": text}), text)
        except TimeoutError:
            problem = f"no result within {OP_TIMEOUT:.0f} s"
        except Exception as exc:  # counted and reported: errors are the measurement
            problem = describe(exc)[:200]
        if problem:
            errors[phase].append(problem)
        return problem is None

    async with kitchen(ctx.workdir, "scale") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        async with proxy(ctx.workdir, "scale", config, ctx.workdir / "xdg-scale") as px, http_client(episodes) as http:
            idle_rss = px.rss_kb()
            tag = uuid.uuid4().hex[:8]

            def opened_one() -> None:
                done[0] += 1
                if done[0] == episodes:
                    opened.set()

            async def first(client: Client, index: int) -> bool:
                async with limiter:
                    try:
                        with anyio.fail_after(OP_TIMEOUT):
                            listed = await client.list_tools()
                    except TimeoutError:
                        errors["open"].append(f"no tools/list result within {OP_TIMEOUT:.0f} s")
                        return False
                    if not any(tool.name == "echo" for tool in listed.tools):
                        errors["open"].append("tools/list lacks echo")
                    return await call(client, "open", f"hello {index}")

            async def episode(index: int) -> None:
                counted = False
                try:
                    async with session(f"{px.url}?episode=bench-{tag}-{index}", MODE, http) as client:
                        healthy = await first(client, index)
                        counted = True
                        opened_one()
                        await go.wait()
                        if healthy:
                            await call(client, "burst", f"again {index}")
                except Exception as exc:  # tools/list or the client itself failed: counted, not raised
                    errors["open" if not counted else "burst"].append(describe(exc)[:200])
                finally:
                    if not counted:
                        opened_one()

            with anyio.fail_after(900):
                async with anyio.create_task_group() as tg:
                    start = time.perf_counter()
                    for index in range(episodes):
                        tg.start_soon(episode, index)
                    await opened.wait()
                    open_s = time.perf_counter() - start
                    await anyio.sleep(1.0)  # let the last responses' buffers go before reading RSS
                    loaded_rss = px.rss_kb()
                    start = time.perf_counter()
                    go.set()
                burst_s = time.perf_counter() - start
    failed = len(errors["open"]) + len(errors["burst"])
    raw = {
        "episodes": episodes,
        "arrivals_in_flight": ARRIVALS,
        "errors_open": len(errors["open"]),
        "errors_burst": len(errors["burst"]),
        "error_samples": sorted(set(errors["open"] + errors["burst"]))[:10],
        "open_s": round(open_s, 2),
        "burst_s": round(burst_s, 2),
        "proxy_rss_idle_kb": idle_rss,
        "proxy_rss_loaded_kb": loaded_rss,
        "proxy_rss_per_episode_kb": round((loaded_rss - idle_rss) / episodes, 1),
        "client_fd_limit": fd_limit,
        "client_mode": MODE,
    }
    row = Row(
        "scale",
        f"{episodes} live episodes, 1 process",
        "-",
        f"{failed} errors; open {open_s:.0f} s, burst {burst_s:.1f} s; RSS {loaded_rss / 1024:.0f} MB",
        None,
        "0 errors",
        failed == 0,
    )
    return SectionResult(raw=raw, rows=[row])
