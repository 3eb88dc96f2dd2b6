"""Three replicas behind HAProxy running the shipped deploy/haproxy.cfg, on one PostgreSQL store, with the Fleet
emulator (issue 15): the owner of an episode is killed mid-task and the agent's next call through HAProxy (same
session id; same episode key) succeeds elsewhere on the same instance; a rolling restart (SIGTERM, drain) of all
three replicas while 30 episodes keep calling fails no call, loses no grade and leaks no instance."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from episode_end_helpers import TASK, live_instances
from haproxy_front import free_port, haproxy
from helpers import stop_process
from mcp import Client
from pg_cluster import PgCluster
from scaleout_helpers import Replica, end_keyed, spawn, store_records, until_closed
from test_adoption import MODERN, _config, _create_issue, _sees_the_issue, agent, episode_with_an_issue
from test_fleet_crash import emulator_process
from test_replicas import Switch

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(420)]
AGENTS = 30


@pytest.fixture
def store_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.new_database()


class Replicas:
    """Three replicas on fixed loopback ports (what HAProxy's server lines name), each restartable on its port."""

    def __init__(self, config: Path, store_url: str) -> None:
        self.config, self.store_url = config, store_url
        self.ports = [free_port() for _ in range(3)]
        self.running: list[Replica | None] = [None, None, None]
        self.stopped: list[Replica] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    async def start(self, i: int) -> Replica:
        self.running[i] = started = await spawn(self.config, self.store_url, "--port", str(self.ports[i]))
        return started

    async def stop(self, i: int, sig: int = signal.SIGTERM) -> Replica:
        stopped = self.running[i]
        assert stopped is not None
        stopped.proc.send_signal(sig)
        with anyio.fail_after(90):
            await anyio.to_thread.run_sync(stopped.proc.wait)
        self.running[i] = None
        self.stopped.append(stopped)
        return stopped

    def by_pid(self, pid: int) -> int:
        return next(i for i, r in enumerate(self.running) if r is not None and r.proc.pid == pid)

    def close(self) -> None:
        for running in self.running:
            if running is not None:
                stop_process(running.proc)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, store_url: str, base_url: str) -> Any:
    # The shipped drain delay: HAProxy's checks (every 0.5 s, down after 2) see readiness fail first.
    replicas = Replicas(_config(tmp_path, base_url, drain_delay=2.0), store_url)
    try:
        for i in range(3):
            await replicas.start(i)
        async with haproxy(replicas.addresses) as front:
            yield replicas, front
    finally:
        replicas.close()
        for r in [*replicas.stopped, *(r for r in replicas.running if r is not None)]:  # shown when a test fails
            print(
                f"--- replica {r.base} (pid {r.proc.pid}) errors:",
                *[x for x in r.log if "ERROR" in x or "Error" in x or "drain" in x],
            )


@pytest.mark.parametrize("era", ["session", "key"])
async def test_kill_9_of_the_owner_behind_haproxy_the_next_call_succeeds_with_its_state(
    tmp_path: Path, store_url: str, era: str
) -> None:
    async with emulator_process() as base_url, cluster(tmp_path, store_url, base_url) as (replicas, front):
        with anyio.fail_after(180):
            async with episode_with_an_issue(front.url, store_url, era, "k-hap") as (client, _, target):
                assert target.owner is not None
                owner = replicas.by_pid(target.owner.pid)
                (instance,) = await live_instances(base_url)
                await replicas.stop(owner, signal.SIGKILL)
                await _sees_the_issue(client)  # same session id / key, through HAProxy, on another replica
                submitted = await client.call_tool("submit_final_answer", {"answer": "done"})
                assert not submitted.is_error, submitted
            if era == "key":
                assert await end_keyed(front.url, "k-hap") == 204
            record = await until_closed(store_url, target.episode_id)
        adopters = [r for r in replicas.running if r is not None and r.says(f"adopted episode {target.episode_id}")]
        assert len(adopters) == 1
        assert await live_instances(base_url) == []
    assert record["reward"]["reward"] == 1.0 and record["reward"]["trigger"] == "submit"
    assert [i["instance_id"] for i in record["instances"]] == [instance["instance_id"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["drain", "kill"])
async def test_a_rolling_restart_of_every_replica_fails_no_call_and_loses_no_grade(
    tmp_path: Path, store_url: str, sig: int
) -> None:
    """Drained (SIGTERM): no call fails. Killed: none fails but those in flight at the moment of a kill."""
    failures: list[str] = []
    stopped: list[Replica] = []
    calls = inflight = in_flight_at_kills = 0
    async with emulator_process() as base_url, cluster(tmp_path, store_url, base_url) as (replicas, front):
        restarted = anyio.Event()

        async def one_agent(n: int, started: anyio.Event) -> None:
            # A third keyed (2026-07-28, hashed), the rest handshake-era sessions (sticky). Under kills all are
            # keyed: an SDK client whose call breaks mid-answer is itself broken, and only a key lets a new
            # client go on with the same episode (a session id cannot be handed to a new SDK client).
            keyed = sig == signal.SIGKILL or n % 3 == 0
            url = f"{front.url}?task={TASK}" + (f"&episode=roll-{n}" if keyed else "")
            while True:
                try:
                    async with agent(url, Switch(), MODERN if keyed else "legacy") as client:
                        await work(n, client, started)
                    break
                except Exception as exc:  # the client broke with its call: a failure; a keyed agent goes on
                    failures.append(f"agent {n}: its client broke: {type(exc).__name__}")
                    if not keyed:
                        return
            if keyed and (status := await end_keyed(front.url, f"roll-{n}")) != 204:
                failures.append(f"agent {n}: end answered {status}")

        async def work(n: int, client: Client, started: anyio.Event) -> None:
            nonlocal calls, inflight
            if not started.is_set():
                await _create_issue(client)
                started.set()
            while not restarted.is_set():
                inflight += 1
                try:
                    await _sees_the_issue(client)
                    calls += 1
                except Exception as exc:  # counted, not raised: the figure is how many failed
                    failures.append(f"agent {n}: {type(exc).__name__}: {exc}")
                finally:
                    inflight -= 1
                await anyio.sleep(0.2)  # a paced agent (think time), not a load test
            submitted = await client.call_tool("submit_final_answer", {"answer": "done"})
            if submitted.is_error:
                failures.append(f"agent {n}: submit refused")

        steps: list[str] = []  # the timeline, shown when the test fails
        t0 = anyio.current_time()
        try:
            with anyio.fail_after(360):
                async with anyio.create_task_group() as tg:
                    ready = [anyio.Event() for _ in range(AGENTS)]
                    for n in range(AGENTS):
                        tg.start_soon(one_agent, n, ready[n])
                    for event in ready:
                        await event.wait()
                    steps.append(f"{anyio.current_time() - t0:.1f}s: {AGENTS} agents started")
                    for i in range(3):  # one after the other, each back before the next goes
                        before = calls
                        in_flight_at_kills += inflight if sig == signal.SIGKILL else 0
                        stopped.append(await replicas.stop(i, sig))
                        steps.append(f"{anyio.current_time() - t0:.1f}s: replica {i} stopped ({calls} calls)")
                        await replicas.start(i)
                        steps.append(f"{anyio.current_time() - t0:.1f}s: replica {i} started")
                        await front.wait_states({"r1": "UP", "r2": "UP", "r3": "UP"}, timeout=60)
                        steps.append(f"{anyio.current_time() - t0:.1f}s: all UP ({calls} calls)")
                        while calls < before + AGENTS:  # every agent got on with its work meanwhile
                            await anyio.sleep(0.1)
                        steps.append(f"{anyio.current_time() - t0:.1f}s: {calls - before} calls since")
                    restarted.set()
        finally:
            print("timeline:", *steps, sep="\n  ")
        records = await _all_closed(store_url, AGENTS)
        leaked = await live_instances(base_url)
    assert len(failures) <= in_flight_at_kills, failures[:10]
    if sig == signal.SIGTERM:
        handed = [sum("handed over" in line for line in r.log) for r in stopped]
        assert all(handed), handed  # each stopped replica handed its episodes over rather than ending them
    assert len(records) == AGENTS
    assert all(r["reward"]["reward"] == 1.0 for r in records), [r["reward"] for r in records]
    assert leaked == []


async def _all_closed(store_url: str, count: int, timeout: float = 180) -> list[dict[str, Any]]:
    with anyio.fail_after(timeout):
        while True:
            found = list((await store_records(store_url)).values())
            if len(found) >= count and all(r["state"] == "closed" for r in found):
                return found
            await anyio.sleep(0.5)  # other processes' writes
