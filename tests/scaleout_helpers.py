"""Shared by the scale-out tests: proxy replicas (real processes) on one PostgreSQL store and the Fleet emulator."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from canaries import FLEET_KEY
from helpers import PY, ROOT, child_env, read_line_matching, stop_process

from fleet_mcp_proxy.store import open_any_store
from fleet_mcp_proxy.store.records import RouteTarget


@dataclass
class Replica:
    proc: subprocess.Popen[str]
    url: str  # .../mcp
    log: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.url.removesuffix("/mcp")

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def says(self, text: str) -> int:
        return sum(text in line for line in self.log)

    async def status(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=10, headers=headers) as http:
            body: dict[str, Any] = (await http.get(f"{self.base}/status")).json()
        return body


async def spawn(config: Path, store_url: str, *extra: str) -> Replica:
    """`serve --port 0 --config CONFIG --store URL` with the suite's Fleet key (see `serve`)."""
    return await serve("--config", str(config), "--store", store_url, *extra, FLEET_API_KEY=FLEET_KEY)


async def serve(*args: str, **env: str) -> Replica:
    """`fleet-mcp-proxy serve --port 0 ARGS`, ready once /healthz says ok; stderr kept in `log` by a thread (no
    task group: replicas stop in any order). Stop it with `stop_process(replica.proc)`."""
    command = [PY, "-m", "fleet_mcp_proxy", "serve", "--port", "0", *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env(**env))
    seen: list[str] = []
    began = anyio.current_time()
    try:
        assert proc.stderr is not None
        url = (await read_line_matching(proc.stderr, r"listening on (\S+)", timeout=60, seen=seen)).group(1)
        running = Replica(proc, url)
        threading.Thread(target=_keep, args=(proc, running.log), daemon=True).start()
        with anyio.fail_after(60):  # the owner row is registered before /healthz says ok
            while await health(running.base) != "ok":
                await anyio.sleep(0.05)
    except BaseException:
        stop_process(proc)  # what it printed shows why it did not come up
        print(f"--- replica (pid {proc.pid}) not up after {anyio.current_time() - began:.1f}s:", *seen)
        raise
    return running


def _keep(proc: subprocess.Popen[str], log: list[str]) -> None:
    assert proc.stderr is not None
    log.extend(proc.stderr)  # line by line, as the replica writes them


@contextlib.asynccontextmanager
async def replica(config: Path, store_url: str, *extra: str) -> AsyncIterator[Replica]:
    running = await spawn(config, store_url, *extra)
    try:
        yield running
    finally:
        stop_process(running.proc)


async def health(base: str) -> str:
    try:
        async with httpx2.AsyncClient(timeout=5) as http:
            return str((await http.get(f"{base}/healthz")).json()["status"])
    except httpx2.TransportError:
        return "down"


async def adoptable(store_url: str, route: str, timeout: float = 30) -> RouteTarget:
    """Until the owner's recorder has written the route and the episode's instance (off the request path)."""
    async with await open_any_store(store_url, create=False) as store:
        with anyio.fail_after(timeout):
            while True:
                target = await store.route_target(route)
                pending = await store.pending_end(target.episode_id) if target is not None else None
                shaken = target is not None and (not route.startswith("session:") or target.handshake is not None)
                if target is not None and shaken and pending is not None and pending.instances:
                    return target
                await anyio.sleep(0.05)


async def store_records(store_url: str) -> dict[str, Any]:
    async with await open_any_store(store_url, create=False) as store:
        return {e["episode_id"]: e async for e in store.export()}


async def until_closed(store_url: str, episode_id: str, timeout: float = 120) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            record = (await store_records(store_url)).get(episode_id)
            if record is not None and record["state"] == "closed":
                return record
            await anyio.sleep(0.2)  # another process's writes


async def end_keyed(url: str, key: str) -> int:
    """DELETE ?episode=KEY (2026-07-28): the explicit end of a keyed episode; its HTTP status."""
    async with httpx2.AsyncClient(timeout=30) as http:
        ended = await http.delete(f"{url}?episode={key}", headers={"Mcp-Protocol-Version": "2026-07-28"})
    return ended.status_code
