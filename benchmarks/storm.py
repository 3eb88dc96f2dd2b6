"""4,096 handshake-era episodes arriving at once on one proxy process, 0 errors expected.

Every episode is an SDK `mcp.Client` in handshake mode (`mode="legacy"`) on its own HTTP connection pool: it
opens (initialize), lists its tools, and makes one `echo` call; all of them start at the same moment, with no
limiter. The environment is the kitchen backend over streamable HTTP. The proxy's catalog cache is off, so each
episode's tools/list provisions it (opens its backend link) and its `echo` call can take the fast lane; the
proxy's `/status` says how many calls the lane answered. The episodes stay open until every one has its answer
(the proxy then holds them all: its RSS is sampled throughout, the peak reported), then close.

The clients are spread over WORKERS load-generator processes (`benchmarks/storm_worker.py`): one process cannot
drive thousands of SDK clients on 2 cores without becoming the bottleneck itself. Each worker reports its own CPU
seconds, so a saturated generator shows in the figures. Limits are opened as for `scale` and RLIMIT_NOFILE's
soft limit is raised to the hard one before any process starts (descriptors go past 1,024 everywhere).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .common import PY, ROOT, describe, http_client, kitchen, proxy, proxy_toml, raise_fd_limit, rss_kb, summary
from .cpu import cpu_seconds
from .report import Context, Row, SectionResult

EPISODES, QUICK_EPISODES = 4096, 512
WORKERS = 4
READY_TIMEOUT = 120.0
STORM_TIMEOUT = 660.0  # a worker's own episodes time out at 600 s: its answer comes before this
CLOSE_TIMEOUT = 180.0
LINE_LIMIT = 16 * 1024 * 1024
SECTION_BUDGET = READY_TIMEOUT + STORM_TIMEOUT + CLOSE_TIMEOUT + 180.0  # + process starts and /status


def shares(total: int, workers: int) -> list[int]:
    """`total` episodes over at most `workers` generators, as evenly as possible, none empty."""
    workers = max(1, min(workers, total))
    base, extra = divmod(total, workers)
    return [base + (i < extra) for i in range(workers)]


def error_counts(errors: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """Errors grouped by the stage they happened at and their text, most frequent first."""
    counts = Counter((e["stage"], e["error"]) for e in errors)
    return [{"stage": s, "error": e, "count": n} for (s, e), n in counts.most_common()]


@dataclass
class StormFigures:
    episodes: int
    latencies_ms: list[float]
    errors: list[dict[str, str]]
    worker_seconds: list[float]
    worker_cpu_s: list[float]


def merge(episodes: int, results: Sequence[dict[str, Any]]) -> StormFigures:
    """The workers' reports as one set of figures."""
    return StormFigures(
        episodes=episodes,
        latencies_ms=[x for r in results for x in r["latencies_ms"]],
        errors=[e for r in results for e in r["errors"]],
        worker_seconds=[r["seconds"] for r in results],
        worker_cpu_s=[r["cpu_s"] for r in results],
    )


@dataclass
class Worker:
    process: anyio.abc.Process
    lines: BufferedByteReceiveStream

    async def read(self) -> dict[str, Any]:
        line = await self.lines.receive_until(b"\n", LINE_LIMIT)
        message: dict[str, Any] = json.loads(line)
        return message

    async def say(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode() + b"\n")


@contextlib.asynccontextmanager
async def workers(url: str, counts: Sequence[int], ctx: Context) -> AsyncIterator[list[Worker]]:
    """The generator processes, each ready (imports done) and waiting for the go line; killed on exit."""
    started: list[Worker] = []
    try:
        for i, count in enumerate(counts):
            log = (ctx.workdir / f"storm-worker-{i}.log").open("wb")
            args = [PY, "-m", "benchmarks.storm_worker", url, str(count)]
            process = await anyio.open_process(
                args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
            log.close()
            assert process.stdout is not None
            started.append(Worker(process, BufferedByteReceiveStream(process.stdout)))
        with anyio.fail_after(READY_TIMEOUT):
            for worker in started:
                await worker.read()
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for worker in started:
                if worker.process.returncode is None:
                    worker.process.kill()
                with anyio.move_on_after(10):
                    await worker.process.wait()


async def _peak_rss(pid: int, peak: list[int], stop: anyio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kb(pid))
        with anyio.move_on_after(0.25):  # a sampling period: time is the subject here
            await stop.wait()


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (machine-wide; the proxy's is
    the only queue the storm fills: links to the backend open at most 32 at a time)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return None


async def _status(base: str) -> dict[str, Any]:
    async with http_client(1) as http:
        response = await http.get(f"{base}/status")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def storm(ctx: Context, episodes: int, n_workers: int) -> dict[str, Any]:
    fd_limit = raise_fd_limit()  # before the processes start: they inherit it
    raw: dict[str, Any] = {"episodes": episodes, "workers": n_workers, "fd_limit": fd_limit, "client_mode": "legacy"}
    async with kitchen(ctx.workdir, "storm") as backend:
        config = proxy_toml({"a": {"url": backend.url}}, catalog_cache=False)
        async with proxy(ctx.workdir, "storm", config, ctx.workdir / "xdg-storm") as px:
            raw["proxy_rss_idle_kb"] = px.rss_kb()
            async with workers(px.url, shares(episodes, n_workers), ctx) as gen:
                cpu_before = {"proxy": cpu_seconds(px.pid), "backend": cpu_seconds(backend.pid)}
                overflows_before = listen_overflows()
                peak, stop = [px.rss_kb()], anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_peak_rss, px.pid, peak, stop)
                    start = time.perf_counter()
                    for worker in gen:
                        await worker.say("go")
                    with anyio.fail_after(STORM_TIMEOUT):
                        results = [(await worker.read())["result"] for worker in gen]
                    raw["seconds"] = round(time.perf_counter() - start, 2)
                    overflows = listen_overflows()
                    if overflows is not None and overflows_before is not None:
                        raw["listen_overflows"] = overflows - overflows_before
                    raw["cpu_s"] = {
                        "proxy": round(cpu_seconds(px.pid) - cpu_before["proxy"], 2),
                        "backend": round(cpu_seconds(backend.pid) - cpu_before["backend"], 2),
                    }
                    try:
                        with anyio.fail_after(60):
                            status = await _status(px.url.removesuffix("/mcp"))
                        raw["lane_served"] = status.get("lane_served")
                        raw["proxy_live_episodes"] = status["totals"]["episodes"]
                    except Exception as exc:  # the figure is reported missing, the storm's figures stand
                        raw["status_error"] = describe(exc)
                    stop.set()
                raw["proxy_rss_peak_kb"] = peak[0]
                closing = time.perf_counter()
                closed: list[dict[str, Any]] = []
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    for worker in gen:
                        await worker.say("close")
                    closed += [await worker.read() for worker in gen]
                raw["close_s"] = round(time.perf_counter() - closing, 2)
                raw["not_closed"] = sum(c.get("not_closed", 0) for c in closed) if len(closed) == len(gen) else None
    figures = merge(episodes, results)
    raw |= {
        "first_echo_ms": summary(figures.latencies_ms),
        "errors": len(figures.errors),
        "error_kinds": error_counts(figures.errors)[:20],
        "worker_seconds": figures.worker_seconds,
        "worker_cpu_s": figures.worker_cpu_s,
    }
    return raw


def rows(raw: dict[str, Any]) -> list[Row]:
    n, errors, first = raw["episodes"], raw["errors"], raw["first_echo_ms"]
    p50 = f"{first['p50'] / 1000:.1f} s" if first.get("n") else "-"
    p99 = f"{first['p99'] / 1000:.1f} s" if first.get("n") else "-"
    overflows = raw.get("listen_overflows")
    figures = (
        f"{errors} errors; first echo p50 {p50}, p99 {p99}; RSS peak {raw['proxy_rss_peak_kb'] / 1024:.0f} MB;"
        f" {raw['seconds']:.0f} s" + ("" if overflows is None else f"; listen-queue overflows {overflows}")
    )
    lane = raw.get("lane_served")
    answered = first.get("n", 0)
    return [
        Row("storm", f"{n} handshake-era arrivals at once, 1 process", "-", figures, None, "0 errors", errors == 0),
        Row(
            "storm",
            "echo calls the fast lane answered",
            "-",
            "-" if lane is None else f"{lane} of {answered}",
            None,
            "all",
            lane is not None and answered > 0 and lane >= answered,
        ),
    ]


async def run(ctx: Context) -> SectionResult:
    raw = await storm(ctx, QUICK_EPISODES if ctx.quick else EPISODES, WORKERS)
    return SectionResult(raw=raw, rows=rows(raw))


async def _main(episodes: int, n_workers: int) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="fmp-storm-") as scratch:
        raw = await storm(Context(quick=False, workdir=Path(scratch)), episodes, n_workers)
    print(json.dumps(raw, indent=2))


if __name__ == "__main__":  # one storm of any size, for measuring: python -m benchmarks.storm EPISODES WORKERS
    anyio.run(_main, int(sys.argv[1]), int(sys.argv[2]))
