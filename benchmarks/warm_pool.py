"""Time to first tool: connect -> tools/list -> first tool call result, on a Fleet environment whose instances
take seconds to provision (the Fleet API emulator, `--provision-delay`), without and with a warm pool of 2.

Two proxies run side by side against one emulator (their own run_id and XDG_STATE_HOME each); episodes
alternate between them and stay open, so each keeps its instance. Before each pooled episode the benchmark
waits until the emulator shows the pool refilled.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import anyio
import httpx2

from .common import EMULATOR, PY, Proc, ms_since, process, proxy, proxy_toml, ratio, session, summary
from .report import Context, Row, SectionResult, at_most, fmt_ms

KEY = "fleet-bench-key-6"
POOL = 2
TOOL = "list_projects"


async def _live(base_url: str, run_id: str) -> int:
    async with httpx2.AsyncClient(timeout=10) as client:
        state = (await client.get(f"{base_url}/_emulator/state")).json()
    return sum(1 for i in state["instances"] if i["run_id"] == run_id and i["status"] == "running")


async def _wait_running(base_url: str, run_id: str, count: int, timeout: float) -> float:
    """Seconds until `count` instances of run_id are running; TimeoutError past `timeout`."""
    start = time.perf_counter()
    with anyio.fail_after(timeout):
        while await _live(base_url, run_id) < count:
            await anyio.sleep(0.1)  # another process's effect: poll
    return round(time.perf_counter() - start, 2)


async def first_tool(url: str, stack: contextlib.AsyncExitStack, timeout: float) -> float:
    """ms from opening a session to its first tool result; the session stays open on `stack`."""
    start = time.perf_counter()
    client = await stack.enter_async_context(session(url))  # outside any cancel scope: it outlives this call
    with anyio.fail_after(timeout):
        await client.list_tools()
        result = await client.call_tool(TOOL, {})
    elapsed = ms_since(start)
    if result.is_error:
        raise RuntimeError(f"{TOOL} failed: {result.content}")
    return elapsed


def _config(base_url: str, run_id: str, pool: int) -> str:
    env: dict[str, Any] = {"fleet": "tracker"}
    if pool:
        env["warm_pool"] = pool
    return proxy_toml({"a": env}, fleet={"base_url": base_url, "run_id": run_id})


async def run(ctx: Context) -> SectionResult:
    delay, reps = (2.0, 2) if ctx.quick else (3.0, 3)
    emulator_args = [PY, str(EMULATOR), "--api-key", KEY, "--instance-limit", "200", "--provision-delay", str(delay)]
    result = SectionResult(raw={"provision_delay_s": delay, "pool": POOL, "episodes_per_case": reps})
    times: dict[str, list[float]] = {"pool0": [], "pool2": []}
    refills: list[float] = []
    async with process(emulator_args, r"FLEET_EMULATOR_READY (\S+)", ctx.workdir / "emulator.log") as emu:
        run_ids = {name: f"bench-{name}-{uuid.uuid4().hex[:8]}" for name in times}
        proxies: dict[str, Proc] = {}
        async with contextlib.AsyncExitStack() as stack:
            for name, pool in (("pool0", 0), ("pool2", POOL)):
                config = _config(emu.url, run_ids[name], pool)
                cm = proxy(ctx.workdir, name, config, ctx.workdir / f"xdg-{name}", {"FLEET_API_KEY": KEY})
                proxies[name] = await stack.enter_async_context(cm)
            result.raw["pool_filled_after_s"] = await _wait_running(emu.url, run_ids["pool2"], POOL, delay + 60)
            for rep in range(reps):
                for name in ("pool0", "pool2") if rep % 2 == 0 else ("pool2", "pool0"):
                    if name == "pool2":  # held episodes keep theirs; the pool must be back to full
                        refills.append(await _wait_running(emu.url, run_ids[name], rep + POOL, delay + 60))
                    times[name].append(await first_tool(proxies[name].url, stack, delay + 120))
    p0, p2 = summary(times["pool0"]), summary(times["pool2"])
    result.raw.update(pool0=p0, pool2=p2, refill_waits_s=refills)
    r_value = ratio(p2["p50"], p0["p50"])
    result.rows.append(
        Row(
            "warm pool",
            f"first tool, {delay:.0f} s provisioning (pool 0 -> pool {POOL})",
            fmt_ms(p0["p50"]),
            fmt_ms(p2["p50"]),
            r_value,
            "ratio <= 0.1",
            at_most(r_value, 0.1),
        )
    )
    return result
