"""Sequential tool-call latency: direct to an SDK backend vs through the proxy, interleaved in one run.

    .venv/bin/python benchmarks/latency.py [--calls 600] [--json benchmarks/latency.json]

Both paths use the handshake era and streamable HTTP; the backend (tests/backends/kitchen.py) and the proxy
each run in their own process on loopback. Calls alternate in blocks so that drift hits both paths alike.
Ratios are the figures that count; absolute times drift between runs and machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 50


def _start(args: list[str], pattern: str, stream: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, text=True, cwd=ROOT, **{stream: subprocess.PIPE})  # type: ignore[call-overload]
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = pipe.readline()
        if match := re.search(pattern, line):
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{args[:3]} did not start")


def _client(url: str) -> Client:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None))
    return Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None)


async def _measure(direct: Client, proxied: Client, calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    for client in (direct, proxied):  # warm both paths (provisioning, connection pools)
        await client.list_tools()
        for _ in range(20):
            await client.call_tool("echo", {"text": "warm"})
    for block in range(calls // BLOCK):
        order = [("direct", direct), ("proxy", proxied)]
        for name, client in order if block % 2 == 0 else reversed(order):
            for _ in range(BLOCK):
                start = time.perf_counter()
                await client.call_tool("echo", {"text": "hello"})
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


async def main(calls: int, out: Path | None) -> None:
    backend, backend_url = _start(
        [sys.executable, str(ROOT / "tests" / "backends" / "kitchen.py"), "a", "--http"], r"READY (\S+)", "stdout"
    )
    proxy, proxy_url = _start(
        [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--log-level", "WARNING",
         "--env", f"a={backend_url}"],
        r"listening on (\S+)",
        "stderr",
    )  # fmt: skip
    try:
        async with _client(backend_url) as direct, _client(proxy_url) as proxied:
            times = await _measure(direct, proxied, calls)
    finally:
        proxy.terminate()
        backend.terminate()
        proxy.wait(20)
        backend.wait(20)
    direct_s, proxy_s = _summary(times["direct"]), _summary(times["proxy"])
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform()},
        "calls_per_path": len(times["direct"]),
        "direct": direct_s,
        "proxy": proxy_s,
        "ratio_p50": round(proxy_s["p50_ms"] / direct_s["p50_ms"], 3),
        "ratio_p99": round(proxy_s["p99_ms"] / direct_s["p99_ms"], 3),
    }
    print(f"{'path':<8}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, s in (("direct", direct_s), ("proxy", proxy_s)):
        print(f"{name:<8}{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['mean_ms']:>10.3f}")
    print(f"ratio p50 {report['ratio_p50']}  p99 {report['ratio_p99']}")
    if out is not None:
        await anyio.Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600, help="calls per path (multiple of 50)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    anyio.run(main, args.calls, args.json)
