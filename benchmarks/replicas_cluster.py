"""The processes of the `replicas` section: a throwaway PostgreSQL server (tests/pg_cluster.py), three replicas on
it and one on SQLite, each with its own kitchen backend; their CPU readings. Everything is stopped by PID (the
PostgreSQL server by `pg_ctl stop` on its own data directory) when the context exits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx2
from pg_cluster import PgCluster, start_cluster

from .common import START_TIMEOUT, Proc, kitchen, proxy, proxy_toml
from .cpu import cpu_seconds, machine_busy_seconds, own_cpu_seconds, tree_cpu_seconds
from .report import Context

REPLICAS = 3
# A replica stopped at the end hands its episodes over at once: no load balancer has to notice it first.
CLUSTER = "[cluster]\ndrain_delay = 0\n"
T = TypeVar("T")


@dataclass
class Cluster:
    pg: PgCluster
    store_url: str
    postmaster: int
    replicas: list[Proc]  # r1..r3, PostgreSQL store
    sqlite: Proc  # the SQLite default, alone
    sqlite_path: str
    kitchens: list[Proc]

    def cpu(self, haproxy_pid: int | None = None) -> dict[str, float]:
        """CPU seconds so far of every process here (all backends together); HAProxy's when given."""
        readings = {f"r{i}": cpu_seconds(r.pid) for i, r in enumerate(self.replicas, 1)}
        readings["sqlite"] = cpu_seconds(self.sqlite.pid)
        readings["backends"] = sum(cpu_seconds(k.pid) for k in self.kitchens)
        readings["postgres"] = tree_cpu_seconds(self.postmaster)
        readings["haproxy"] = 0.0 if haproxy_pid is None else cpu_seconds(haproxy_pid)
        readings["load generator"] = own_cpu_seconds()
        readings["machine"] = machine_busy_seconds()  # every tenant's: this machine is shared
        return readings


def address(replica: Proc) -> str:
    """host:port of a replica, as HAProxy's server lines take it."""
    return replica.url.removeprefix("http://").removesuffix("/mcp")


async def status(replica: Proc) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10) as http:
        body: dict[str, Any] = (await http.get(replica.url.removesuffix("/mcp") + "/status")).json()
    return body


async def _healthy(replica: Proc) -> None:
    """Until /healthz says ok: the replica's owner row (with its address) is in the store by then."""
    url = replica.url.removesuffix("/mcp") + "/healthz"
    async with httpx2.AsyncClient(timeout=5) as http:
        with anyio.fail_after(START_TIMEOUT):
            while True:
                with contextlib.suppress(httpx2.TransportError):
                    if (await http.get(url)).json().get("status") == "ok":
                        return
                await anyio.sleep(0.05)  # another process's startup: nothing to await but its answer


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[tuple[PgCluster, str]]:
    pg = await anyio.to_thread.run_sync(start_cluster)
    try:
        yield pg, await anyio.to_thread.run_sync(pg.new_database)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pg.stop)


@contextlib.asynccontextmanager
async def _replica(ctx: Context, name: str, backend: Proc, store: str) -> AsyncIterator[Proc]:
    config = proxy_toml({"a": {"url": backend.url}}) + CLUSTER
    async with proxy(ctx.workdir, name, config, ctx.workdir / f"xdg-{name}", extra_args=["--store", store]) as px:
        await _healthy(px)
        yield px


@contextlib.asynccontextmanager
async def together(managers: Sequence[contextlib.AbstractAsyncContextManager[T]]) -> AsyncIterator[list[T]]:
    """Enter the contexts at once, each in a task of its own that also exits it; exit them at once too.

    Starting processes one after the other would cost the section about 15 s of its minute.
    """
    values: dict[int, T] = {}
    entered = [anyio.Event() for _ in managers]
    leave = anyio.Event()

    async def hold(i: int) -> None:
        async with managers[i] as value:
            values[i] = value
            entered[i].set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        for i in range(len(managers)):
            tg.start_soon(hold, i)
        for event in entered:
            await event.wait()
        try:
            yield [values[i] for i in range(len(managers))]
        finally:
            leave.set()


@contextlib.asynccontextmanager
async def cluster(ctx: Context) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        pg, store_url = await stack.enter_async_context(_postgres())
        postmaster = int((pg.root / "data" / "postmaster.pid").read_text().split()[0])
        names = [f"k{i}" for i in range(REPLICAS + 1)]
        kitchens = await stack.enter_async_context(together([kitchen(ctx.workdir, name) for name in names]))
        sqlite_path = ctx.workdir / "sqlite-store" / "episodes.sqlite3"
        sqlite_path.parent.mkdir()
        stores = [str(sqlite_path)] + [store_url] * REPLICAS
        names = ["sqlite"] + [f"r{i}" for i in range(1, REPLICAS + 1)]
        started = [_replica(ctx, name, k, store) for name, k, store in zip(names, kitchens, stores, strict=True)]
        sqlite, *replicas = await stack.enter_async_context(together(started))
        yield Cluster(pg, store_url, postmaster, replicas, sqlite, str(sqlite_path), kitchens)
