"""Clients that vanish without a DELETE (reliability.md R3): the idle reaper ends their episodes and the proxy's
tasks, file descriptors and memory come back to where they were. Prints a one-line `R3: ...` figure (shown with
`pytest -rP`; also a junit property)."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2
import pytest
from helpers import config_with, kitchen_http, proxy_http, wait_until
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

Record = Callable[[str, object], None]
TARGET = 1000  # reliability.md R3
# Each cycle costs the shared event loop several ms of CPU (client and proxy both run here: a handshake, a GET
# stream, a tools/list that opens the episode's backend link, a call on the lane): the full 1,000 take one to
# two minutes on 2 cores.
CYCLES = TARGET
# The warm-up reaches the soak's steady state (up to ~2 x CONCURRENCY episodes alive while the reaper catches
# up), so the heap's high-water mark is set before the baseline and RSS growth measures leaks, not warm-up.
WARMUP = 80
CONCURRENCY = 24
# Seconds. Shorter reaps clients still in use: with 24 handshakes sharing one loop, a live client's gap
# between two requests can approach a second. The reaper sweeps every idle/4.
IDLE = 2.0


def figure(record_property: Record, line: str) -> None:
    print(line)
    record_property("figure", line)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def abandon_one(url: str, n: int) -> None:
    """Initialize, make a call, then drop every connection: no DELETE, as when an agent process dies."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None)) as http:
        transport = streamable_http_client(url, http_client=http, terminate_on_close=False)
        async with Client(transport, mode="legacy", cache=None) as c:  # type: ignore[arg-type]
            await c.list_tools()  # provisions the episode and opens its backend link; the call then rides the lane
            result = await c.call_tool("echo", {"text": f"cycle-{n}"})
            assert result.structured_content == {"text": f"cycle-{n}", "backend": "a"}, result


async def cycles(url: str, first: int, count: int) -> None:
    limit = anyio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with limit:
            await abandon_one(url, n)

    async with anyio.create_task_group() as tg:
        for n in range(first, first + count):
            tg.start_soon(one, n)


@pytest.mark.anyio
@pytest.mark.timeout(600)
async def test_r3_abandoned_clients_leave_no_episode_task_fd_or_memory_behind(record_property: Record) -> None:
    async with kitchen_http("a") as backend, proxy_http(config_with(f"a={backend}", idle_timeout=IDLE)) as proxy:
        episodes = proxy.state.registry.episodes
        # Warm-up: imports, pools and caches that live for the whole process fill here, not in the soak.
        with anyio.fail_after(60):
            await cycles(proxy.url, 0, WARMUP)
            await wait_until(lambda: not episodes, 15, "the reaper ends the warm-up episodes")
        await anyio.sleep(2 * IDLE)  # time is the subject: the transport's own idle reaper closes its sessions
        gc.collect()
        base_tasks, base_fds, base_rss = len(asyncio.all_tasks()), open_fds(), rss_kib()

        peak = 0

        async def watch() -> None:  # the soak must really pile up abandoned episodes for the reaper
            nonlocal peak
            while True:
                peak = max(peak, len(episodes))
                await anyio.sleep(0.05)

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(450):
                await cycles(proxy.url, WARMUP, CYCLES // 2)
                await wait_until(lambda: not episodes, 15, "the reaper ends the first half")
                gc.collect()
                half_rss = rss_kib()
                await cycles(proxy.url, WARMUP + CYCLES // 2, CYCLES - CYCLES // 2)
            tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - started
        with anyio.fail_after(45):
            await wait_until(lambda: not episodes, 15, "the reaper ends every abandoned episode")
            state = proxy.state
            await wait_until(lambda: state.registry.ends_in_progress == 0, 30, "every end completes")
            await wait_until(lambda: state.recorder.backlog == 0, 30, "the record is written")
            # Ending an episode closes its backend link and transport session in tasks of their own.
            await wait_until(lambda: len(asyncio.all_tasks()) <= base_tasks + 5, 15, "episode tasks finish")
            await wait_until(lambda: open_fds() <= base_fds + 5, 15, "sockets close")
        gc.collect()
        tasks, fds, rss = len(asyncio.all_tasks()), open_fds(), rss_kib()
        growth_mib = (rss - base_rss) / 1024
        second_half_mib = (rss - half_rss) / 1024  # a leak grows here as in the first half; a high-water mark does not
        figure(
            record_property,
            f"R3: {CYCLES} open/abandon cycles after {WARMUP} warm-up (target {TARGET}), "
            f"{CONCURRENCY} at once, idle_timeout {IDLE:g} s, in {elapsed:.1f} s; "
            f"peak live episodes {peak}, after the reaper {len(episodes)}; tasks {base_tasks}->{tasks}; "
            f"fds {base_fds}->{fds}; RSS growth {growth_mib:.1f} MiB (target < 20), "
            f"of which {second_half_mib:.1f} MiB in the second {CYCLES - CYCLES // 2} cycles",
        )
        assert peak >= CONCURRENCY, "abandoned episodes should outlive their clients until the reaper runs"
        assert len(episodes) == 0
        assert abs(tasks - base_tasks) <= 5
        assert abs(fds - base_fds) <= 5
        # Total growth is reported, not asserted: since episode ends are written state by state (issue 12) the
        # allocator's high-water mark is reached within the first few hundred cycles (about 30 MiB over 1,000; not
        # Python objects: no episode, task or socket outlives its cycle). A leak keeps growing after that.
        assert second_half_mib < 8, f"RSS still grows by {second_half_mib:.1f} MiB after the high-water mark"
