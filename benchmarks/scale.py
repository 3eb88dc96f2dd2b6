"""Many concurrent episodes on one proxy process: each makes one tools/list and one call, all at once.

Clients are 2026-07-28-era SDK clients keyed by `?episode=KEY` (no handshake, no GET stream: the cheapest
real client here) sharing one HTTP connection pool with as many connections as episodes. The episodes
stay live after their call (keyed episodes end on idle timeout), so the proxy's RSS at the end holds them all.
"""

from __future__ import annotations

import time
import uuid

import anyio
import mcp_types as t

from .common import Mode, http_client, kitchen, proxy, proxy_toml, raise_fd_limit, session
from .report import Context, Row, SectionResult

MODE: Mode = "2026-07-28"


async def run(ctx: Context) -> SectionResult:
    episodes = 200 if ctx.quick else 1000
    fd_limit = raise_fd_limit()  # before the processes start: they inherit it
    errors: list[str] = []
    ok = [0]
    async with kitchen(ctx.workdir, "scale") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        async with proxy(ctx.workdir, "scale", config, ctx.workdir / "xdg-scale") as px, http_client(episodes) as http:
            idle_rss = px.rss_kb()
            run_tag = uuid.uuid4().hex[:8]

            async def episode(index: int) -> None:
                text = f"hello {index}"
                try:
                    async with session(f"{px.url}?episode=bench-{run_tag}-{index}", MODE, http) as client:
                        listed = await client.list_tools()
                        result = await client.call_tool("echo", {"text": text})
                except Exception as exc:  # counted and reported: errors are the measurement
                    errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                    return
                content = result.content[0] if result.content else None
                if result.is_error or not isinstance(content, t.TextContent) or content.text != text:
                    errors.append(f"wrong result: is_error={result.is_error}")
                elif not any(tool.name == "echo" for tool in listed.tools):
                    errors.append("tools/list lacks echo")
                else:
                    ok[0] += 1

            start = time.perf_counter()
            with anyio.fail_after(600):
                async with anyio.create_task_group() as tg:
                    for index in range(episodes):
                        tg.start_soon(episode, index)
            wall = time.perf_counter() - start
            loaded_rss = px.rss_kb()
    raw = {
        "episodes": episodes,
        "ok": ok[0],
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:10],
        "wall_s": round(wall, 2),
        "proxy_rss_idle_kb": idle_rss,
        "proxy_rss_loaded_kb": loaded_rss,
        "proxy_rss_per_episode_kb": round((loaded_rss - idle_rss) / episodes, 1),
        "client_fd_limit": fd_limit,
        "client_mode": MODE,
    }
    row = Row(
        "scale",
        f"{episodes} concurrent episodes, 1 process",
        "-",
        f"{len(errors)} errors, {wall:.1f} s, RSS {loaded_rss / 1024:.0f} MB",
        None,
        "0 errors",
        not errors,
    )
    return SectionResult(raw=raw, rows=[row])
