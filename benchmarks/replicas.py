"""The scaled-out deployment (issue 15): replicas on one PostgreSQL store behind HAProxy (deploy/haproxy.cfg).

- **Episode cost of the store**: open (initialize) + one `echo` call + end (DELETE), one episode after the other,
  on a replica with the SQLite store vs one on PostgreSQL (blocks of 10 in ABBA order); p50, mean, and the
  CPU each store path costs per episode (the replica's, plus the PostgreSQL server's), read once every row is
  closed.
- **Forwarding hop**: one handshake-era session on replica 1 (its owner); its `echo` calls go straight to the
  owner or to replica 2, which forwards them one hop to the owner (blocks of 25, ABBA); p50 of each.
- **Replicas**: calls/s and p50 of `echo` with 32 handshake-era sessions calling back to back, through HAProxy
  in front of 1, 2 and 3 replicas, each window interleaved (ABBA) with the same load sent straight to replica 1;
  and once, replica 1 (PostgreSQL) against the replica on SQLite, same load, no HAProxy. For every window the
  CPU (user + sys) of each process: replica CPU per 1,000 calls lets a reader extrapolate past this machine.

Every replica has its own kitchen backend (a real run's instances are per episode, never one shared process).
The load generator, HAProxy, PostgreSQL, the replicas and the backends share the machine's cores: on 2 cores the
replica curve is bounded by the cores, not by the replicas.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from haproxy_front import haproxy
from mcp import Client

from fleet_mcp_proxy.store import open_any_store

from .common import Proc, http_client, ms_since, ratio, session, summary
from .cpu import deltas, per_thousand
from .replicas_cluster import Cluster, address, cluster, status, together
from .report import Context, Row, SectionResult, fmt_ms
from .throughput import window

SESSIONS = 32
EPISODE_BLOCK = 10
HOP_BLOCK = 25
CAVEAT = "bounded by the 2 cores"


def rate(calls: int, seconds: float) -> float:
    return round(calls / seconds, 1) if seconds > 0 else 0.0


def abba(rounds: int, names: list[str]) -> list[str]:
    """`names` forwards, then backwards, and so on: a drift in the machine's load hits every path alike."""
    return [name for r in range(rounds) for name in (names if r % 2 == 0 else names[::-1])]


def cores_busy(used: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds per process over a window -> cores each kept busy."""
    return {name: round(value / seconds, 2) for name, value in used.items()} if seconds > 0 else {}


class Retarget(httpx2.AsyncBaseTransport):
    """Sends a session's requests to whichever replica `port` names (what a lost stick-table entry does)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.port: int | None = None
        self.session_id: str | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.port is not None:
            request.url = request.url.copy_with(port=self.port)
        response = await self._inner.handle_async_request(request)
        self.session_id = self.session_id or response.headers.get("mcp-session-id")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _echo(client: Client) -> float:
    start = time.perf_counter()
    result = await client.call_tool("echo", {"text": "x"})
    if result.is_error:
        raise RuntimeError(f"echo failed: {result.content}")
    return ms_since(start)


async def open_many(stack: contextlib.AsyncExitStack, url: str, count: int) -> list[Client]:
    """`count` sessions opened at once (each in a task that also closes it), each with one call made: a proxy
    episode's backend link opens on its first call."""
    clients = await stack.enter_async_context(together([session(url) for _ in range(count)]))
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(_echo, client)
    return clients


async def _closed(target: str, count: int) -> None:
    """Until the `count` newest episodes of a store are closed (their ends run off the request path)."""
    async with await open_any_store(target, create=False) as store:
        with anyio.fail_after(120):
            while True:
                newest = await store.list(limit=count)
                if len(newest) == count and all(e.state == "closed" for e in newest):
                    return
                await anyio.sleep(0.1)  # another process's writes


async def episodes(cl: Cluster, count: int) -> dict[str, Any]:
    targets = {"sqlite": (cl.sqlite, cl.sqlite_path), "postgres": (cl.replicas[0], cl.store_url)}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    warm = 3
    async with http_client(8) as http:

        async def one(replica: Proc) -> float:
            start = time.perf_counter()
            async with session(replica.url, http=http) as client:
                await _echo(client)
            return ms_since(start)

        for replica, _ in targets.values():
            for _ in range(warm):
                await one(replica)
        for _, target in targets.values():
            await _closed(target, warm)
        before = cl.cpu()
        for name in abba(count // EPISODE_BLOCK, list(targets)):
            samples[name] += [await one(targets[name][0]) for _ in range(EPISODE_BLOCK)]
        for name, (_, target) in targets.items():
            await _closed(target, warm + len(samples[name]))
        used = deltas(before, cl.cpu())
    per_episode = {
        "sqlite": {"replica_ms": round(used["sqlite"] * 1000 / len(samples["sqlite"]), 2), "postgres_ms": 0.0},
        "postgres": {
            "replica_ms": round(used["r1"] * 1000 / len(samples["postgres"]), 2),
            "postgres_ms": round(used["postgres"] * 1000 / len(samples["postgres"]), 2),
        },
    }
    return {name: {**summary(s), "cpu": per_episode[name]} for name, s in samples.items()}


async def hop(cl: Cluster, calls: int) -> dict[str, Any]:
    owner, other = cl.replicas[0], cl.replicas[1]
    ports = {"owner": int(address(owner).rsplit(":", 1)[1]), "forwarded": int(address(other).rsplit(":", 1)[1])}
    samples: dict[str, list[float]] = {name: [] for name in ports}
    transport = Retarget()
    async with (
        httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(60.0, read=300.0)) as http,
        session(owner.url, http=http) as client,
    ):
        await _echo(client)  # opens the episode's backend link on its owner
        route = f"session:{transport.session_id}"
        async with await open_any_store(cl.store_url, create=False) as store:
            with anyio.fail_after(60):  # the owner writes the route off the request path
                while await store.route_owner(route) is None:
                    await anyio.sleep(0.05)
        forwarded_before = (await status(other))["forwarded"]
        for name in ports:  # warm both paths (the hop's connection pool to the owner)
            transport.port = ports[name]
            for _ in range(10):
                await _echo(client)
        for name in abba(calls // HOP_BLOCK, list(ports)):
            transport.port = ports[name]
            samples[name] += [await _echo(client) for _ in range(HOP_BLOCK)]
        forwarded = (await status(other))["forwarded"] - forwarded_before
    if forwarded < len(samples["forwarded"]):
        raise RuntimeError(f"replica 2 forwarded {forwarded} of {len(samples['forwarded'])} calls: not a hop measured")
    return {**{name: summary(s) for name, s in samples.items()}, "forwarded_by_replica_2": forwarded}


@dataclass
class Tally:
    """One path's windows added up."""

    calls: int = 0
    seconds: float = 0.0
    errors: int = 0
    samples: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def figures(self, replicas: list[str]) -> dict[str, Any]:
        cpu = {name: round(value, 3) for name, value in self.cpu.items()}
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 2),
            "errors": self.errors,
            "calls_per_s": rate(self.calls, self.seconds),
            "p50_ms": round(statistics.median(self.samples), 2) if self.samples else None,
            "cpu_s": cpu,
            "cores_busy": cores_busy(cpu, self.seconds),
            "replica_cpu_s_per_1000_calls": per_thousand(sum(cpu.get(r, 0.0) for r in replicas), self.calls),
            "cpu_s_per_1000_calls": {name: per_thousand(value, self.calls) for name, value in cpu.items()},
        }


async def compare(
    cl: Cluster, paths: dict[str, tuple[list[Client], list[str]]], seconds: float, rounds: int, hap: int | None
) -> dict[str, Any]:
    """ABBA windows over `paths` (name -> sessions, the replicas they reach); calls/s, p50 and CPU per path."""
    tallies = {name: Tally() for name in paths}
    for name in abba(rounds, list(paths)):
        tally = tallies[name]
        before = cl.cpu(hap)
        got = await window(paths[name][0], seconds, tally.samples)
        for process, used in deltas(before, cl.cpu(hap)).items():
            tally.cpu[process] = tally.cpu.get(process, 0.0) + used
        tally.calls += int(got["calls"])
        tally.seconds += got["seconds"]
        tally.errors += int(got["errors"])
    return {name: tally.figures(paths[name][1]) for name, tally in tallies.items()}


async def levels(cl: Cluster, seconds: float, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        direct = await open_many(stack, cl.replicas[0].url, SESSIONS)
        sqlite = await open_many(stack, cl.sqlite.url, SESSIONS)
        paths = {"sqlite": (sqlite, ["sqlite"]), "direct": (direct, ["r1"])}
        out["sqlite_vs_postgres"] = await compare(cl, paths, seconds, rounds, None)
        for n in range(1, len(cl.replicas) + 1):
            async with haproxy([address(r) for r in cl.replicas[:n]]) as front, contextlib.AsyncExitStack() as st:
                via = await open_many(st, front.url, SESSIONS)
                spread = Counter(f"r{i}" for i in (await front.stuck_server_ids()).values())
                paths = {"direct": (direct, ["r1"]), "haproxy": (via, [f"r{i}" for i in range(1, n + 1)])}
                out[f"haproxy_{n}"] = {
                    **await compare(cl, paths, seconds, rounds, front.proc.pid),
                    "sessions_per_replica": dict(sorted(spread.items())),
                }
    return out


def _cell(path: dict[str, Any]) -> str:
    return f"{path['calls_per_s']:.0f}/s, p50 {fmt_ms(path['p50_ms'])}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def rows(raw: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    ep = raw["episodes"]
    for stat in ("p50", "mean"):
        s, p = ep["sqlite"][stat], ep["postgres"][stat]
        metric = f"episode open + call + end, {stat} (SQLite -> PostgreSQL)"
        out.append(Row("replicas", metric, fmt_ms(s), fmt_ms(p), ratio(p, s)))
    s_cpu, p_cpu = ep["sqlite"]["cpu"], ep["postgres"]["cpu"]
    pg_total = p_cpu["replica_ms"] + p_cpu["postgres_ms"]
    out.append(
        Row(
            "replicas",
            "CPU per episode, replica (+ PostgreSQL server)",
            fmt_ms(s_cpu["replica_ms"]),
            f"{fmt_ms(p_cpu['replica_ms'])} + {fmt_ms(p_cpu['postgres_ms'])}",
            ratio(pg_total, s_cpu["replica_ms"]),
        )
    )
    h = raw["hop"]
    out.append(
        Row(
            "replicas",
            "echo p50, owner -> via another replica (1 hop)",
            fmt_ms(h["owner"]["p50"]),
            fmt_ms(h["forwarded"]["p50"]),
            ratio(h["forwarded"]["p50"], h["owner"]["p50"]),
        )
    )
    lv = raw["levels"]
    sq, pg = lv["sqlite_vs_postgres"]["sqlite"], lv["sqlite_vs_postgres"]["direct"]
    out.append(
        Row(
            "replicas",
            f"calls/s, {SESSIONS} sessions, 1 replica, SQLite -> PostgreSQL",
            _cell(sq),
            _cell(pg),
            ratio(pg["calls_per_s"], sq["calls_per_s"]),
        )
    )
    out.append(
        Row(
            "replicas",
            "replica CPU per 1,000 calls, SQLite -> PostgreSQL",
            _cpu(sq["replica_cpu_s_per_1000_calls"]),
            _cpu(pg["replica_cpu_s_per_1000_calls"]),
            ratio(pg["replica_cpu_s_per_1000_calls"], sq["replica_cpu_s_per_1000_calls"]),
        )
    )
    n = 0
    while f"haproxy_{n + 1}" in lv:
        n += 1
        level = lv[f"haproxy_{n}"]
        d, v = level["direct"], level["haproxy"]
        out.append(
            Row(
                "replicas",
                f"calls/s, {SESSIONS} sessions, direct to r1 -> HAProxy + {n} replica{'s' if n > 1 else ''}",
                _cell(d),
                _cell(v),
                ratio(v["calls_per_s"], d["calls_per_s"]),
            )
        )
        out.append(
            Row(
                "replicas",
                f"replica CPU per 1,000 calls, direct -> HAProxy + {n}",
                _cpu(d["replica_cpu_s_per_1000_calls"]),
                _cpu(v["replica_cpu_s_per_1000_calls"]),
                ratio(v["replica_cpu_s_per_1000_calls"], d["replica_cpu_s_per_1000_calls"]),
            )
        )
    if n:
        top = lv[f"haproxy_{n}"]["haproxy"]
        costs = by_part(top["cpu_s_per_1000_calls"], n)
        out.append(
            Row(
                "replicas",
                f"CPU per 1,000 calls, HAProxy + {n}, by process",
                "-",
                ", ".join(f"{k} {_cpu(v)}" for k, v in costs.items()),
            )
        )
        busy = by_part(top["cores_busy"], n)
        ours = sum(v for v in busy.values() if v is not None)
        detail = ", ".join(f"{k} {v:.2f}" for k, v in busy.items() if v is not None)
        whole = top["cores_busy"].get("machine")
        out.append(
            Row(
                "replicas",
                f"cores busy, HAProxy + {n} (caveat: {CAVEAT})",
                f"machine {whole:.2f} of {os.cpu_count()}" if whole is not None else "-",
                f"ours {ours:.2f}: {detail}",
            )
        )
    return out


def by_part(per_process: dict[str, float | None], replicas: int) -> dict[str, float | None]:
    """Per-process figures grouped as a reader sizes a deployment: all replicas, HAProxy, PostgreSQL, ..."""
    shares = [per_process.get(f"r{i}") for i in range(1, replicas + 1)]
    known = [v for v in shares if v is not None]
    return {
        "replicas": round(sum(known), 3) if len(known) == len(shares) else None,
        "HAProxy": per_process.get("haproxy"),
        "PostgreSQL": per_process.get("postgres"),
        "backends": per_process.get("backends"),
        "load gen": per_process.get("load generator"),
    }


async def run(ctx: Context) -> SectionResult:
    seconds, rounds = (1.5, 1) if ctx.quick else (3.0, 2)
    n_episodes, hop_calls = (20, 50) if ctx.quick else (60, 200)
    raw: dict[str, Any] = {
        "sessions": SESSIONS,
        "window_seconds": seconds,
        "windows_per_path": rounds,
        "caveat": f"load generator, HAProxy, PostgreSQL, replicas and backends share this machine's cores: {CAVEAT}",
    }
    phases: dict[str, float] = {}
    start = time.perf_counter()
    async with cluster(ctx) as cl:
        phases["start"] = time.perf_counter() - start
        raw["episodes"] = await episodes(cl, n_episodes)
        phases["episodes"] = time.perf_counter() - start - sum(phases.values())
        raw["hop"] = await hop(cl, hop_calls)
        phases["hop"] = time.perf_counter() - start - sum(phases.values())
        raw["levels"] = await levels(cl, seconds, rounds)
        phases["levels"] = time.perf_counter() - start - sum(phases.values())
    phases["stop"] = time.perf_counter() - start - sum(phases.values())
    raw["phase_seconds"] = {name: round(value, 1) for name, value in phases.items()}
    return SectionResult(raw=raw, rows=rows(raw))
