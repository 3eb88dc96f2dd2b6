"""Large tool results (`big`, 1 MiB and 10 MiB of text): time per call and whether the result arrives whole.

Each call gets a fresh session (connected outside the timing), so a transport that breaks on a large
result costs that one call, not the rest of the section.
"""

from __future__ import annotations

import time

import anyio
import mcp_types as t

from .common import kitchen, list_all, ms_since, proxy, proxy_toml, ratio, session, summary
from .report import Context, Row, SectionResult, fmt_ms

MIB = 1024 * 1024
CALL_TIMEOUT = 120.0


async def one_call(url: str, size: int, is_proxy: bool) -> tuple[float | None, str]:
    """(ms, "ok") or (None, what went wrong)."""
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with session(url) as client:
                await list_all(client)  # else call_tool lists tools first, inside the timing
                if is_proxy:  # open the episode's backend link first: only the result is timed
                    await client.call_tool("echo", {"text": "warm"})
                start = time.perf_counter()
                result = await client.call_tool("big", {"size": size})
                elapsed = ms_since(start)
    except Exception as exc:  # any failure of the path is the finding; the table reports it
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    text = result.content[0].text if result.content and isinstance(result.content[0], t.TextContent) else ""
    if result.is_error or len(text) != size:
        return None, f"is_error={result.is_error}, {len(text)} of {size} characters"
    return elapsed, "ok"


async def run(ctx: Context) -> SectionResult:
    plan = ((1 * MIB, 2), (10 * MIB, 2)) if ctx.quick else ((1 * MIB, 5), (10 * MIB, 3))
    result = SectionResult()
    async with kitchen(ctx.workdir, "large") as backend:
        config = proxy_toml({"a": {"url": backend.url}})
        async with proxy(ctx.workdir, "large", config, ctx.workdir / "xdg-large") as px:
            urls = {"direct": backend.url, "proxy": px.url}
            for size, reps in plan:
                times: dict[str, list[float]] = {"direct": [], "proxy": []}
                failures: dict[str, list[str]] = {"direct": [], "proxy": []}
                for rep in range(reps):
                    order = ["direct", "proxy"] if rep % 2 == 0 else ["proxy", "direct"]
                    for name in order:
                        ms, status = await one_call(urls[name], size, name == "proxy")
                        if ms is None:
                            failures[name].append(status)
                        else:
                            times[name].append(ms)
                d, p = summary(times["direct"]), summary(times["proxy"])
                label = f"{size // MIB} MiB"
                result.raw[label] = {"direct": d, "proxy": p, "failures": failures, "calls_per_path": reps}
                proxy_ok = not failures["proxy"]
                result.rows.append(
                    Row(
                        "large",
                        f"{label} result, p50",
                        fmt_ms(d.get("p50")) if not failures["direct"] else f"FAIL {len(failures['direct'])}/{reps}",
                        fmt_ms(p.get("p50")) if proxy_ok else f"FAIL {len(failures['proxy'])}/{reps}",
                        ratio(p.get("p50"), d.get("p50")),
                        "passes",
                        proxy_ok,
                    )
                )
    return result
